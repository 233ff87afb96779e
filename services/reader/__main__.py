"""`python -m services.reader` runs the case reader."""

from services.reader.app import main

main()
