"""The event store's one schema, for SQLite and PostgreSQL alike (SQLAlchemy Core).

Portable types only: text, big integers, booleans, bytes. Times are ISO-8601 UTC text
with microseconds (fixed width, so they sort as text and round-trip exactly on both
databases); JSON is text written with sorted keys.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)

metadata = MetaData()

# Where the projection stands: the last stream sequence applied and the Merkle frontier
# after it. Written in the same transaction as the views it describes.
projection = Table(
    "projection",
    metadata,
    Column("name", Text, primary_key=True),
    Column("last_sequence", BigInteger, nullable=False),
    Column("frontier", Text, nullable=False),  # JSON list of hex subtree roots
)

cases = Table(
    "cases",
    metadata,
    Column("case_id", Text, primary_key=True),
    Column("kind", Text),
    Column("source", Text),
    Column("status", Text, nullable=False),
    Column("step", Text),
    Column("outcome", Text),
    Column("opened_at", Text),
    Column("updated_at", Text, nullable=False),
    Column("closed_at", Text),
    Column("event_count", Integer, nullable=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("open_actions", Integer, nullable=False),
    Column("pending_approvals", Integer, nullable=False),
    Column("flagged_events", Integer, nullable=False),
    Column("chain_head", Text, nullable=False),
    Index("cases_by_status", "status", "case_id"),
)

actions = Table(
    "actions",
    metadata,
    # Keyed within the case: an event id reused in another case (past the broker's
    # duplicate window) must not collide with this one.
    Column("case_id", Text, primary_key=True),
    Column("request_id", Text, primary_key=True),
    Column("action_type", Text, nullable=False),
    Column("requested_by", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("requested_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Column("parameters", Text, nullable=False),
    Column("approver_role", Text),
    Column("deadline", Text),
    Column("approver", Text),
    Column("policy_bundle_hash", Text),
    Column("outcome", Text),
)

# The audit timeline, one row per message of the case log, with the exact stored bytes
# and headers (what an export carries and an auditor re-verifies).
audit_events = Table(
    "audit_events",
    metadata,
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("case_id", Text, nullable=False),
    Column("event_id", Text),
    Column("event_type", Text),
    Column("actor", Text),
    Column("signer", Text),
    Column("occurred_at", Text),
    Column("stored_at", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("rationale", Text),
    Column("evidence", Text, nullable=False),
    Column("decision", Text),
    Column("request_id", Text),
    Column("approver", Text),
    Column("policy_bundle_hash", Text),
    Column("determining_policies", Text, nullable=False),
    Column("verified", Boolean, nullable=False),
    Column("problem", Text),
    Column("duplicate_of", BigInteger),
    Column("subject", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("leaf_hash", Text, nullable=False),
    Column("chain_hash", Text, nullable=False),
    Index("audit_events_by_case", "case_id", "sequence"),
    Index("audit_events_by_event_id", "event_id"),
)

agent_activity = Table(
    "agent_activity",
    metadata,
    Column("actor", Text, primary_key=True),
    Column("event_type", Text, primary_key=True),
    Column("events", BigInteger, nullable=False),
    Column("flagged", BigInteger, nullable=False),
    Column("first_at", Text, nullable=False),
    Column("last_at", Text, nullable=False),
)

VIEW_TABLES = (projection, cases, actions, audit_events, agent_activity)
