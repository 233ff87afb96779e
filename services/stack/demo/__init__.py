"""`mesh demo`: the whole mesh up as processes, reference claims flowing through it, a
person watching, and a summary that ends with the audit verification.

Claims of mixed kinds go in through the ingress (most over NATS as the `crm`
principal, some over HTTP): small ones are paid straight away, large ones wait for the
demo approver (who approves most and rejects some; her assistant approves the smaller
ones for her, under a delegation she signed), fraudulent ones are denied by
policy, lapsed policies are rejected at intake, malformed input is refused at the door
and kept in the dead-letter stream, and some payees' banks fail, flap, stall or turn out
to be closed at the gateway — retries, the circuit breaker, escalation to a human and
compensation all happen on the way. Thefts wait for a police report (14 days, which
the demo's compressed clock turns into seconds): the CRM sends some later and those
claims resume; the others escalate at the deadline.

One module per role: `workload` (the claims and how they are opened), `approver` (the
person at the claims desk), `payments` (the exactly-once accounting), `report` (the
result and its summary) and `orchestrator` (the run itself).
"""

from services.stack.demo.approver import APPROVER
from services.stack.demo.orchestrator import Demo
from services.stack.demo.payments import completions_in, payment_problems
from services.stack.demo.report import FINAL, DemoResult, latencies, print_summary
from services.stack.demo.workload import MIX, PAYEE, DemoCase, make_cases

__all__ = [
    "APPROVER",
    "FINAL",
    "MIX",
    "PAYEE",
    "Demo",
    "DemoCase",
    "DemoResult",
    "completions_in",
    "latencies",
    "make_cases",
    "payment_problems",
    "print_summary",
]
