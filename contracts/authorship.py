"""Which event types are reserved to one kind of author (pure data).

The one home of this rule: the registry refuses a card that claims them, the broker's
generated permissions let only their authors publish them, the policy service's card
declares them, and consumers and auditors refuse them from anyone else.
"""

from __future__ import annotations

from contracts.catalog import CATALOG

# What only the policy service may publish: its decisions on requested actions.
DECISION_TYPES = (
    "action_approved",
    "action_denied",
    "approval_required",
    "approval_escalated",
    "approval_expired",
)
# What only the policy service may publish besides decisions: its own operations.
POLICY_OPERATION_TYPES = ("policy_bundle_activated", "circuit_state_changed")
# Durable timers (contracts.events.timers): reserved to nobody; the policy service sets
# them for approval deadlines, as any agent whose card says so may.
TIMER_TYPES = ("timer_set", "timer_fired", "timer_cancelled")
# What only the ingress may publish besides openings: what outside systems add to their
# cases (an agent that could write it could forge a police report).
INGRESS_TYPES = ("evidence_received",)
# What only a human approver may publish.
APPROVAL_TYPES = ("approval_granted", "approval_rejected")
# What only the registry may publish: its history.
REGISTRY_TYPES = tuple(
    name for name in CATALOG.names() if CATALOG.type_of(name).family == "registry"
)

# What the executor of an approved action must be able to read to prove the approval
# before its side effect (mesh/_trust/authorization.py): the case's opening (its kind,
# which a delegation an approving agent acted under must cover), the request, every
# answer of the policy service to it (escalations name the role a human must hold) and
# the human's grant. An executor whose card reads less cannot prove an approval, and
# refuses to act rather than act on part of the chain.
APPROVAL_CHAIN_TYPES = (
    # The case's kind: what a delegation under which an agent approved must cover.
    "case_opened",
    "action_requested",
    "action_approved",
    "action_denied",
    "approval_required",
    "approval_escalated",
    "approval_expired",
    "approval_granted",
)
