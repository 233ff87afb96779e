"""The whole mesh as processes (what `mesh demo` runs): every case reaches a final
state, payments happen exactly once and the audit verifies — also when each agent and
the event store is killed with SIGKILL mid-run and restarted. Malformed input at the
ingress is answered with the reasons and kept."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import msgspec
import pytest
from rich.console import Console

from contracts import CaseClosed, CaseClosedPayload
from contracts.ingress import IngressReply
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._runtime.dead_letters import read_dead_letters
from mesh._trust.registry_client import request_with_patience
from mesh.errors import PermissionDenied, PublishFailed
from services.stack.demo import Demo, DemoResult, make_cases, print_summary
from services.stack.stack import running_stack

pytestmark = pytest.mark.e2e


def check(result: DemoResult) -> None:
    output = io.StringIO()
    print_summary(result, Console(file=output, width=200))
    assert not result.timed_out, output.getvalue()
    assert result.all_final, output.getvalue()
    assert result.paid_once, output.getvalue()
    # Not vacuous: claims were paid, each completion is in the log, each capture in the
    # gateway's journal (tests/e2e/test_exactly_once.py shows the check failing).
    paid = sum(1 for view in result.views.values() if view.outcome == "paid")
    assert paid > 0, output.getvalue()
    assert sum(result.completions.values()) == paid, output.getvalue()
    assert sum(p["captures"] for p in result.ledger) == paid, output.getvalue()
    assert result.report.ok, output.getvalue()
    assert result.outcomes["malformed"]["refused at ingress"] >= 1, output.getvalue()


VICTIMS = ("intake", "fraud", "adjudication", "payment", "eventstore")


async def test_every_case_ends_though_each_process_is_killed_in_turn(tmp_path: Path) -> None:
    """One run, every agent and the event store SIGKILLed in turn while claims flow (each
    kill when more replies have come, so that some claims are in every stage at each):
    one stack instead of one per victim, with the same cases in flight at each kill."""
    async with running_stack(tmp_path / "mesh") as stack:
        demo = Demo(stack, make_cases(120, seed=11), Console(file=io.StringIO()))
        running = asyncio.create_task(demo.run(timeout=120))
        for turn, victim in enumerate(VICTIMS):
            while sum(1 for c in demo.cases if c.reply is not None) < 15 * (turn + 1):
                assert not running.done(), running
                await asyncio.sleep(0.02)
            await asyncio.to_thread(stack.supervisor.kill, victim)
            await asyncio.sleep(0.5)
            stack.supervisor.restart(victim)
        result = await running
    check(result)


async def test_the_ingress_answers_bad_input_and_keeps_it(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "mesh") as stack:
        crm = await stack.connect("crm")
        subject = stack.topology.subjects.service("ingress", "crm")

        async def ask(body: bytes) -> IngressReply:
            msg = await request_with_patience(crm, subject, body, timeout=10, what="ingress")
            return msgspec.json.decode(msg.data, type=IngressReply)

        claim = {
            "kind": "insurance_claim",
            "external_ref": "CLM-1",
            "data": {
                "policy_number": "P-12345",
                "claimant": "A. Jansen",
                "claim_type": "auto",
                "amount_cents": 42_001,
                "incident_date": "2026-10-01",
                "payee_account": "DE89-12345678",
            },
        }
        opened = await ask(json.dumps(claim).encode())
        assert opened.ok
        assert opened.case_id == "crm-CLM-1"
        again = await ask(json.dumps(claim).encode())
        assert again.duplicate
        assert again.event_id == opened.event_id

        refused = await ask(b'{"kind": "insurance_claim", "external_ref": "CLM-2", "data": {}}')
        assert not refused.ok
        assert "data: Object missing required field" in refused.errors[0]
        not_json = await ask(b"{not json")
        assert not not_json.ok
        assert "request:" in not_json.errors[0]

        token = stack.layout.http_token("crm")
        async with httpx.AsyncClient(base_url=stack.ingress_http) as http:
            bad = await http.post(
                "/v1/cases/crm",
                content=b'{"kind": "parking_ticket", "external_ref": "X-1", "data": {}}',
                headers={"Authorization": f"Bearer {token}"},
            )
            assert bad.status_code == 422
            assert "parking_ticket" in bad.json()["errors"][0]
            stranger = await http.post("/v1/cases/crm", content=b"{}")
            assert stranger.status_code == 401
            claim["external_ref"] = "CLM-3"
            created = await http.post(
                "/v1/cases/crm",
                content=json.dumps(claim).encode(),
                headers={"Authorization": f"Bearer {token}"},
            )
            assert created.status_code == 201
            assert created.json()["case_id"] == "crm-CLM-3"

        letters = await read_dead_letters(stack.operator_nc.jetstream(), stack.topology)
        kept = {letter.sequence: letter for letter in letters}
        for reply in (refused, not_json):
            assert reply.dead_letter in kept
            letter = kept[reply.dead_letter]
            assert letter.kind == "invalid_input"
            assert letter.reason == "; ".join(reply.errors)
        assert b"{not json" in [letter.body for letter in letters]
        assert len(letters) == 3  # and the HTTP one

        # The external system may open cases as itself, and do nothing else.
        forged = CaseClosed(
            case_id="crm-CLM-1", actor="crm", payload=CaseClosedPayload(outcome="x")
        )
        publisher = EventPublisher(
            crm.jetstream(), stack.layout.identity("crm"), stack.topology, nc=crm
        )
        with pytest.raises((PermissionDenied, PublishFailed)):
            await publisher.publish(forged)
        history = await read_case(stack.operator_nc.jetstream(), stack.topology, "crm-CLM-1")
        assert [s.event.event_name() for s in history] != []
        assert "case_closed" not in [
            s.event.event_name() for s in history if s.event.actor == "crm"
        ]
        with pytest.raises(Exception, match=r"no service answers|[Pp]ermissions|Timeout"):
            await request_with_patience(
                crm,
                stack.topology.subjects.service("ingress", "someone-else"),
                json.dumps(claim).encode(),
                timeout=2,
                what="ingress as another source",
                patience=0.5,
            )
        # The broker dropped it: nothing was opened in another source's name.
        assert (
            await read_case(stack.operator_nc.jetstream(), stack.topology, "someone-else-CLM-3")
            == []
        )
