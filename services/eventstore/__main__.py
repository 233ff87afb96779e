"""`python -m services.eventstore` runs the event store."""

from services.eventstore.app import main

main()
