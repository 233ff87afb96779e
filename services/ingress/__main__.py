"""`python -m services.ingress` runs the ingress."""

from services.ingress.app import main

main()
