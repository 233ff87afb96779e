"""The audit's one pass over a bundle: each family of checks in turn, in the order
each needs the last's results, gathered into one report."""

from __future__ import annotations

from contracts.audit_bundle import AuditBundle
from services.eventstore.audit.cards import card_findings
from services.eventstore.audit.case_policy import check_policy
from services.eventstore.audit.checkpoints import signed_roots
from services.eventstore.audit.delegations import delegation_findings
from services.eventstore.audit.event_ids import check_event_ids
from services.eventstore.audit.manifest import read_pages, sealed_entries
from services.eventstore.audit.messages import checked_messages
from services.eventstore.audit.principals import Trust
from services.eventstore.audit.report import Report
from services.eventstore.audit.seal import check_against_seal, check_case_chains
from services.eventstore.audit.tree import check_tree


def verify_bundle(
    bundle: AuditBundle, store_key: str | None = None, *, compressed_clock_allowed: bool = False
) -> Report:
    """`store_key`: pin the event store's key instead of trusting the bundle's.
    `compressed_clock_allowed`: a demo's or a test's log, whose timers ran on a
    compressed clock (noted); on any other, such a timer is a violation."""
    report = Report(scope=bundle.scope)
    trust = Trust(store_key)
    pages = read_pages(bundle, report)
    trust.load_sealed([page.manifest for page in pages], bundle.principals, report)
    entries, tree_size = sealed_entries(pages, bundle.scope, trust, report)
    sealed_times = {e.sequence: e.stored_at for e in entries if e.stored_at}
    records = checked_messages(bundle, trust.keys, sealed_times, report)
    roots = signed_roots(bundle, trust, report)
    report.checkpoints = len(roots)
    report.tree_size = tree_size
    check_against_seal(records, entries, tree_size, report)
    check_case_chains(records, entries, report)
    check_tree(bundle, records, roots, tree_size, report)
    check_event_ids(records, entries, report)
    check_policy(records, trust.keys, report, compressed_clock_allowed=compressed_clock_allowed)
    for where, problem in card_findings(list(trust.principals.values())):
        report.add("enrolment", where, problem)
    for where, problem in delegation_findings(list(trust.principals.values()), trust.keys):
        report.add("delegation", where, problem)
    report.events = len(records)
    report.cases = len({r.case_id for r in records})
    return report
