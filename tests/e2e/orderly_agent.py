"""`mesh run tests.e2e.orderly_agent`: the order-checking agent as a process of its own,
journaling to $MESH_ORDER_JOURNAL under the name $MESH_ORDER_NAME."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.order_journal import CLAIMS_STEPS, orderly

agent = orderly(
    Path(os.environ["MESH_ORDER_JOURNAL"]),
    os.environ.get("MESH_ORDER_NAME", str(os.getpid())),
    work=float(os.environ.get("MESH_ORDER_WORK", "0.02")),
)

# `mesh run tests.e2e.orderly_agent:claims_watcher`: the same, watching every step of
# the claims mesh (owned by the claims team, as the stack's registry expects).
claims_watcher = orderly(
    Path(os.environ["MESH_ORDER_JOURNAL"]),
    os.environ.get("MESH_ORDER_NAME", str(os.getpid())),
    agent_id="claims-watcher",
    owner="claims-team",
    events=CLAIMS_STEPS,
    work=float(os.environ.get("MESH_ORDER_WORK", "0.005")),
)
