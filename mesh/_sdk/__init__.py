"""The agent SDK's internals: declaring an agent, `mesh run`'s process wiring, reading
a case through the case reader.

Internal to `mesh`: agents import `mesh`, services import `mesh` and `mesh.service`.
"""
