"""`python -m services.registry` runs the registry service."""

from services.registry.app import main

main()
