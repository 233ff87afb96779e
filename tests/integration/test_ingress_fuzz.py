"""Thousands of generated inputs to the ingress, over NATS and over HTTP, against a real
nats-server: valid claims, claims broken in every way we could think of, and raw bytes.

For every input: it is answered (a reply, an HTTP status in a defined set; never a 5xx,
never a timeout), the answer agrees with the published JSON Schema on accept or refuse
(tests/unit/ingress/schema_oracle.py), and what is refused is in the dead-letter stream
with its reason, whole or as its start with the whole one's size and digest.

Seeded (`derandomize`): every run tests the same inputs, so CI is reproducible. The
ingress runs in-process on an event loop in a thread of its own, since hypothesis drives
synchronous tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from nats.aio.client import Client

from contracts.ingress import IngressReply
from mesh._broker.connection import connect
from mesh._broker.provisioning import ensure_stream
from mesh._broker.topology import Topology
from mesh._runtime.dead_letters import DeadLetter, read_dead_letters
from mesh._trust.identity import Identity
from mesh.settings import MeshSettings
from mesh.testing import unique_root
from services.ingress.body import DIGEST, SIZE, TRUNCATED
from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings
from tests.unit.ingress.schema_oracle import acceptable

# Hypothesis keeps caches in ./.hypothesis even without an example database; the
# project's pytest `norecursedirs` replaces the defaults, so such a directory in the
# working tree would make collection warn (and warnings are errors). Keep it elsewhere.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "agent-mesh-hypothesis")

T = TypeVar("T")
TOKEN = "fuzz-token"
EXAMPLES_PER_CHANNEL = int(os.environ.get("MESH_FUZZ_EXAMPLES", "1000"))
REFUSED_HTTP_STATUSES = {400, 413, 422}

# ------------------------------------------------------------------ the ingress, in a thread


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    topology: Topology
    service: IngressService
    sender: Client
    http: httpx.Client

    @property
    def settings(self) -> IngressSettings:
        return self.service.ingress

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def over_nats(self, body: bytes) -> IngressReply:
        subject = self.topology.subjects.service("ingress", "crm")
        msg = self.run(self.sender.request(subject, body, timeout=20))
        return msgspec.json.decode(msg.data, type=IngressReply)

    def over_http(self, body: bytes) -> tuple[int, IngressReply]:
        response = self.http.post(
            "/v1/cases/crm", content=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        return response.status_code, msgspec.json.decode(response.content, type=IngressReply)

    def dead_letter(self, sequence: int) -> DeadLetter:
        js = self.sender.jetstream()
        [letter] = self.run(read_dead_letters(js, self.topology, start=sequence, limit=1))
        return letter


@pytest.fixture
def harness(nats_url: str) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ingress-loop", daemon=True)
    thread.start()
    topology = Topology(unique_root("fuzz"))

    async def start() -> tuple[Client, Client, IngressService]:
        own = await connect(nats_url, name="ingress")
        sender = await connect(nats_url, name="crm")
        for stream in topology.streams():
            await ensure_stream(sender.jetstream(), stream)
        service = IngressService(
            own,
            Identity.generate(),
            MeshSettings(subject_root=topology.root),
            IngressSettings(http_port=0, http_tokens={"crm": TOKEN}),
            topology,
        )
        await service.start()
        return own, sender, service

    async def stop(own: Client, sender: Client, service: IngressService) -> None:
        await service.stop()
        await sender.close()
        await own.close()

    own, sender, service = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    base_url = f"http://127.0.0.1:{service.http_port}"
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            yield Harness(loop, topology, service, sender, http)
    finally:
        asyncio.run_coroutine_threadsafe(stop(own, sender, service), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ------------------------------------------------------------------ inputs

LIMIT = IngressSettings().max_body_bytes
CLAIM_TYPES = ["auto", "home", "travel", "health"]

valid_data = st.fixed_dictionaries(
    {
        "policy_number": st.from_regex(r"\AP-[0-9]{4,10}\Z"),
        "claimant": st.text(min_size=1, max_size=40),
        "claim_type": st.sampled_from(CLAIM_TYPES),
        "amount_cents": st.integers(1, 1_000_000_000),
        "incident_date": st.dates().map(date.isoformat),
        "payee_account": st.text(min_size=4, max_size=64),
    },
    optional={"currency": st.just("EUR"), "description": st.text(max_size=200)},
)
valid_claims = st.fixed_dictionaries(
    {
        "kind": st.just("insurance_claim"),
        "external_ref": st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"),
        "data": valid_data,
    }
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
odd_text = st.sampled_from(
    ["\n", "\r\n", "\x00", "\x1f", "\x7f", "\u2028", "\ufeff", "\U0001f600", "\u0301", " "]
)
# Strings at and around the lengths the contract names.
lengths = st.sampled_from([0, 1, 3, 4, 12, 13, 63, 64, 65, 199, 200, 201, 3999, 4000, 4001])


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """A valid claim with one thing changed (sometimes still valid: that is checked too)."""
    document: dict[str, Any] = draw(valid_claims)
    data: dict[str, Any] = document["data"]
    where: dict[str, Any] = draw(st.sampled_from([document, data, data]))
    name = draw(st.sampled_from(sorted(where)))
    mutation = draw(
        st.sampled_from(
            [
                "wrong type",
                "number as string",
                "integral float",
                "missing",
                "extra",
                "length",
                "odd characters",
                "deep",
                "kind",
                "not an object",
            ]
        )
    )
    match mutation:
        case "wrong type":
            where[name] = draw(json_values)
        case "number as string":
            data["amount_cents"] = str(data["amount_cents"])
        case "integral float":
            data["amount_cents"] = float(data["amount_cents"])
        case "missing":
            del where[name]
        case "extra":
            where[draw(st.text(max_size=12))] = draw(json_values)
        case "length":
            where[name] = draw(st.sampled_from(["x", "7", "é", "\U0001f600"])) * draw(lengths)
        case "odd characters":
            value = where[name] if isinstance(where[name], str) else str(where[name])
            at = draw(st.integers(0, len(value)))
            where[name] = value[:at] + draw(odd_text | st.characters()) + value[at:]
        case "deep":
            where[name] = nested(draw(st.integers(1, 60)), where[name])
        case "kind":
            document["kind"] = draw(
                st.sampled_from(["Insurance_claim", "insurance_claim ", "parking", ""])
                | st.text(max_size=20)
            )
        case "not an object":
            return draw(json_values)
    return document


def serialised(document: Any, ascii_only: bool, compact: bool) -> bytes:
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(document, ensure_ascii=ascii_only, separators=separators).encode()


def mixed(*weighted: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, drawn in proportion to its weight."""
    choices = [strategy for weight, strategy in weighted for _ in range(weight)]
    return st.sampled_from(choices).flatmap(lambda strategy: strategy)


json_bodies = st.builds(
    serialised,
    mixed((1, valid_claims), (1, mutated_documents())),
    st.booleans(),
    st.booleans(),
)


@st.composite
def damaged_bodies(draw: st.DrawFn, most: int) -> bytes:
    """A serialised claim, then damaged as bytes: what a JSON encoder would not write."""
    body = draw(st.builds(serialised, valid_claims, st.booleans(), st.booleans()))
    damage = draw(
        st.sampled_from(
            ["byte", "cut", "not utf-8", "bom", "duplicate", "surrogate", "garbage", "pad", "pad"]
        )
    )
    at = draw(st.integers(0, len(body)))
    match damage:
        case "byte":
            return body[:at] + draw(st.binary(min_size=1, max_size=3)) + body[at + 1 :]
        case "cut":
            return body[:at]
        case "not utf-8":
            bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf0\x9f\x98"]))
            return body.replace(b'"P-', b'"P-' + bad, 1) if at % 2 else body[:at] + bad + body[at:]
        case "bom":
            return b"\xef\xbb\xbf" + body
        case "duplicate":
            twice = draw(st.sampled_from([b'"kind"', b'"amount_cents"', b'"data"']))
            return body.replace(twice, twice + b': "x", ' + twice, 1)
        case "surrogate":
            lone = draw(st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud83d\\u0041"]))
            return body.replace(b'"claim_type"', b'"description": "' + lone + b'", "claim_type"')
        case "garbage":
            return body + draw(st.binary(min_size=1, max_size=8))
        case _:  # whitespace up to, at and over the limit
            size = draw(
                st.integers(LIMIT - 8, LIMIT + 8) | st.integers(LIMIT + 9, most) | st.just(LIMIT)
            )
            return body + b" " * max(0, size - len(body))


raw_bytes = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"{", b"}", b"[", b"]", b'"', b":", b",", b"1", b"\\", b"null", b"a"]),
    max_size=60,
).map(b"".join)


def bodies(most: int) -> st.SearchStrategy[bytes]:
    """About 35% valid claims, 35% claims changed in one way, 20% damaged bytes, 10% raw."""
    return mixed((7, json_bodies), (2, damaged_bodies(most)), (1, raw_bytes))


# ------------------------------------------------------------------ what must hold


def check(harness: Harness, body: bytes, reply: IngressReply) -> None:
    codes = [found.code for found in reply.problems]
    assert not {"internal", "unavailable"} & set(codes), reply
    # The mix, as `pytest --hypothesis-show-statistics` shows it.
    event("accepted" if reply.ok else f"refused: {codes[0]}")
    if len(body) >= LIMIT:
        event("at the limit" if len(body) == LIMIT else "over the limit")
    if acceptable(body, max_body_bytes=LIMIT):
        assert reply.ok, (body[:500], reply)
        assert reply.case_id is not None
        assert reply.event_id is not None
        return
    assert not reply.ok, (body[:500], reply)
    assert reply.problems
    assert len(reply.errors) == len(reply.problems)
    assert reply.dead_letter is not None
    letter = harness.dead_letter(reply.dead_letter)
    assert letter.kind == "invalid_input"
    reason = " ".join("; ".join(reply.errors).split())  # kept as one line, at most 2,000
    assert letter.reason == (reason if len(reason) <= 2000 else reason[:1999] + "…")
    assert letter.headers[SIZE] == str(len(body))
    assert letter.headers[DIGEST] == f"sha256:{hashlib.sha256(body).hexdigest()}"
    if len(body) <= LIMIT:
        assert letter.body == body
        assert TRUNCATED not in letter.headers
    else:
        assert letter.body == body[: harness.settings.dead_letter_keep_bytes]
        assert letter.headers[TRUNCATED] == "true"


FUZZ = settings(
    max_examples=EXAMPLES_PER_CHANNEL,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one ingress serves every example
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@FUZZ
@given(body=bodies(most=300 * 1024))  # over NATS the broker's max_payload (1 MB) bounds it
def test_every_nats_input_is_answered_as_the_schema_says_and_refusals_are_kept(
    harness: Harness, body: bytes
) -> None:
    check(harness, body, harness.over_nats(body))


@FUZZ
@given(body=bodies(most=2 * 1024 * 1024))
def test_every_http_input_is_answered_as_the_schema_says_and_refusals_are_kept(
    harness: Harness, body: bytes
) -> None:
    status, reply = harness.over_http(body)
    if reply.ok:
        assert status == (200 if reply.duplicate else 201)
    else:
        assert status in REFUSED_HTTP_STATUSES, (status, reply)
    check(harness, body, reply)
