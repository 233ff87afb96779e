"""The runtime: consuming, dispatching and settling messages, retries and breakers,
dead letters and replays, running a service process and answering requests.

Internal to `mesh`: agents import `mesh`, services import `mesh` and `mesh.service`.
"""
