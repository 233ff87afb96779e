"""`mesh case …`, `mesh audit …` and `mesh projections …` (plug-ins of the mesh CLI).

Queries go to the running event store over request/reply. Replay and verification
read the log itself; `audit verify --bundle` needs nothing but the file. One module per
command group; `_output` holds what they print with.
"""

from services.eventstore.cli.audit import audit_app
from services.eventstore.cli.case import case_app
from services.eventstore.cli.projections import projections_app

__all__ = ["audit_app", "case_app", "projections_app"]
