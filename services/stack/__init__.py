"""The reference mesh as processes: what `mesh up` runs and `mesh demo` drives.

Everything here is a separate OS process with its own key, as containers would be:
an embedded nats-server enforcing the registry's generated authorization, the
registry, policy, event store, ingress (NATS and HTTP), the simulated payment gateway
and the four claims agents, each onboarding with a key of its own.
"""
