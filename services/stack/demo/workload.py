"""The demo's workload: claims of mixed kinds, opened the way an outside system opens
them — most over NATS as the `crm` principal, one in five over HTTP."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
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


def make_cases(count: int, seed: int) -> list[DemoCase]:
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=count)
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

        await asyncio.gather(*(submit(case) for case in cases))
