"""The demo's workload: claims of mixed kinds, opened the way an outside system opens
them — most over NATS as the `crm` principal, one in five over HTTP. With waiting
claims, some are thefts: intake asks for a police report and the case waits; for some
the CRM sends the report a little later (days, on the demo's compressed clock), for
the others it never comes and the case escalates at intake's deadline."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.ingress import CLAIM_KIND, IngressReply
from mesh._trust.registry_client import request_with_patience
from mesh.errors import BrokerError
from services.stack.stack import Stack

# kind -> share of the cases
MIX = {
    "small": 0.38,
    "large": 0.15,
    "fraudulent": 0.08,
    "malformed": 0.08,
    "lapsed": 0.05,
    "gateway down": 0.06,
    "gateway flaky": 0.08,
    "gateway slow": 0.06,
    "account closed": 0.06,
}
# Thefts: their police report comes from the CRM a while after the claim, or never.
WAITING_MIX = {"theft reported": 0.06, "theft unreported": 0.04}
# Intake waits 14 days for a police report; at this rate they pass in about 8 seconds.
# A demo's and a test's setting only (MESH_CLOCK_RATE): a real mesh keeps real time.
DEMO_CLOCK_RATE = 150_000.0
THEFT = "car stolen from the street overnight"
PAYEE = {
    "gateway down": "FAIL",
    "gateway flaky": "FLAKY",
    "gateway slow": "SLOW",
    "account closed": "CLOSED",
}


@dataclass
class DemoCase:
    number: int
    kind: str
    body: dict[str, Any]
    via_http: bool
    submitted_at: float = 0.0
    reply: IngressReply | None = None
    http_status: int | None = None
    events: list[IngressReply] = field(default_factory=list)  # what it sent the case later


def make_cases(count: int, seed: int, *, waiting: bool = False) -> list[DemoCase]:
    """`waiting`: thefts among them, which wait for a police report (only for a stack
    whose intake runs at DEMO_CLOCK_RATE: otherwise they wait 14 real days)."""
    rng = random.Random(seed)
    mix = {**MIX, **WAITING_MIX} if waiting else MIX
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=count)
    today = date.today()
    cases = []
    for number, kind in enumerate(kinds, start=1):
        amount = rng.randrange(20_000, 95_000)
        claim_type = rng.choice(["auto", "home", "travel"])
        if kind == "large":
            amount, claim_type = rng.randrange(200_000, 1_500_000), rng.choice(["auto", "home"])
        data: dict[str, Any] = {
            "policy_number": f"P-{rng.randrange(1000, 9999)}7",  # in force: not ending in 0
            "claimant": rng.choice(["A. Jansen", "B. Okafor", "C. Rossi", "D. Novak", "E. Kim"]),
            "claim_type": claim_type,
            "amount_cents": amount + 1,  # never a round amount
            "incident_date": str(today - timedelta(days=rng.randrange(1, 200))),
            "description": rng.choice(["rear-ended at a light", "water damage", "lost luggage"]),
            "payee_account": f"{PAYEE.get(kind, 'DE89')}-{rng.randrange(10**8):08d}",
        }
        if kind == "fraudulent":
            data["description"] = "staged collision, no witnesses, cash only"
        if kind == "lapsed":
            data["policy_number"] = f"P-{rng.randrange(100, 999)}0"
        if kind in WAITING_MIX:
            data["description"], data["claim_type"] = THEFT, "auto"
        body: dict[str, Any] = {
            "kind": CLAIM_KIND,
            "external_ref": f"CLM-{number:05d}",
            "data": data,
        }
        if kind == "malformed":
            broken = rng.choice(["amount", "policy", "field", "kind"])
            if broken == "amount":
                data["amount_cents"] = -5
            elif broken == "policy":
                data["policy_number"] = "12345"
            elif broken == "field":
                del data["payee_account"]
            else:
                body["kind"] = "parking_ticket"
        cases.append(DemoCase(number, kind, body, via_http=number % 5 == 0))
    return cases


async def _post_again_if_lost(
    http: httpx.AsyncClient, url: str, *, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    """A POST whose connection broke (a kept-alive connection the server closed just as
    it was reused) is sent again, a few times: opening a case is idempotent by its
    reference, so a second request answers for the first."""
    for attempt in range(1, 4):
        try:
            return await http.post(url, content=content, headers=headers)
        except httpx.TransportError:
            if attempt == 3:
                raise
            await asyncio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


async def _ask_again_if_lost(crm: Client, subject: str, body: bytes) -> Msg:
    """A request that went unanswered (lost with the connection to a server that died
    under it: the client fails over to another member, the request does not) is asked
    again, a few times: opening a case is idempotent by its reference."""
    for attempt in range(1, 5):
        try:
            return await request_with_patience(crm, subject, body, timeout=5, what="open a case")
        except BrokerError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def feed(stack: Stack, crm: Client, cases: list[DemoCase]) -> None:
    """Opens every case, at most 24 at a time; each case keeps the ingress's reply."""
    gate = asyncio.Semaphore(24)
    token = stack.layout.http_token("crm")
    subject = stack.topology.subjects.service("ingress", "crm")
    async with httpx.AsyncClient(base_url=stack.ingress_http, timeout=10) as http:

        async def submit(case: DemoCase) -> None:
            body = msgspec.json.encode(case.body)
            async with gate:
                case.submitted_at = time.monotonic()
                if case.via_http:
                    response = await _post_again_if_lost(
                        http,
                        "/v1/cases/crm",
                        content=body,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    case.http_status = response.status_code
                    case.reply = msgspec.json.decode(response.content, type=IngressReply)
                else:
                    msg = await _ask_again_if_lost(crm, subject, body)
                    case.reply = msgspec.json.decode(msg.data, type=IngressReply)
            if case.kind == "theft reported" and case.reply is not None and case.reply.ok:
                await _report_later(stack, crm, case)

        await asyncio.gather(*(submit(case) for case in cases))


async def _report_later(stack: Stack, crm: Client, case: DemoCase) -> None:
    """The CRM sends the claim's police report a few (compressed) days later."""
    await asyncio.sleep(1.0 + (case.number % 5) * 0.5)
    report = {
        "case_source": "crm",
        "external_ref": case.body["external_ref"],
        "event_id": f"PR-{case.number:05d}",
        "kind": "police_report",
        "data": {
            "report_number": f"PD-{20260000 + case.number}",
            "police_force": "Politie Amsterdam",
            "filed_on": str(date.today()),
        },
    }
    subject = stack.topology.subjects.service_as("ingress", "events", "crm")
    msg = await _ask_again_if_lost(crm, subject, msgspec.json.encode(report))
    case.events.append(msgspec.json.decode(msg.data, type=IngressReply))
