"""`python -m services.policy` runs the policy service."""

from services.policy.app import main

main()
