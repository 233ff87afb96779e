"""The broker layer: connecting to NATS, the embedded server, the streams and their
provisioning, publishing to and reading from the log.

Internal to `mesh`: agents import `mesh`, services import `mesh` and `mesh.service`.
"""
