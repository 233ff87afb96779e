from __future__ import annotations

import asyncio
import base64
import json

import pytest
from nats.aio.msg import Msg

from contracts import CaseClosed, CaseOpened
from contracts.cards import AgentCard
from tests.security.kit import Mesh, lapsed, new_ref, screening, signed

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


async def test_explore(mesh: Mesh) -> None:
    spy_id = f"spy-{new_ref('s')[-6:]}"
    spy = await mesh.enrol(
        AgentCard(
            agent_id=spy_id,
            name="spy",
            version="1",
            owner="claims-team",
            purpose="x",
            consumes=["case_opened"],
            produces=["case_step_completed"],
        )
    )
    case_id = await mesh.open(lapsed(new_ref("explore")))
    _, opened = await mesh.wait_for_event(case_id, CaseOpened)
    await mesh.wait_for_event(case_id, CaseClosed)
    work = mesh.topology.work_stream
    cases = mesh.topology.cases_stream
    received: list[Msg] = []

    async def keep(msg: Msg) -> None:
        received.append(msg)

    inbox = spy.nc.new_inbox()
    await spy.nc.subscribe(inbox + ".>", cb=keep)
    for k, durable in enumerate(mesh.topology.partition_durables(spy_id)):
        await spy.send(
            f"$JS.API.CONSUMER.MSG.NEXT.{work}.{durable}",
            json.dumps({"batch": 5, "expires": 500_000_000, "group": "mesh"}).encode(),
            reply=f"{inbox}.{k}",
        )
    await asyncio.sleep(1.5)
    for m in received:
        print("GOT", m.subject, m.reply, m.headers, m.data[:80])
    print("ERR", spy.errors)
    # forged header publish
    ev = screening(case_id, opened, spy_id)
    subject = mesh.subjects.for_event(ev)
    body, headers = signed(ev, spy.identity, subject)
    headers["Nats-Stream-Source"] = f"{cases} 1 {subject} x {subject}"
    try:
        ack = await spy.js.publish(subject, body, headers=headers)
        print("ACK", ack)
    except Exception as exc:
        print("PUBERR", repr(exc), getattr(exc, "description", None), getattr(exc, "err_code", None))
    await asyncio.sleep(1)
    op = mesh.operator
    info = await op.jetstream().stream_info(work)
    print("WORK", info.state)
    last = info.state.last_seq
    for seq in range(max(1, last - 3), last + 1):
        r = await op.request(f"$JS.API.STREAM.MSG.GET.{work}", json.dumps({"seq": seq}).encode())
        d = json.loads(r.data)
        m = d.get("message", {})
        print(seq, m.get("subject"), base64.b64decode(m.get("hdrs", "")).decode(errors="replace"))
    # reply trick: pull to a case subject
    received.clear()
    target = mesh.subjects.case_event(f"crm-{new_ref('victim')}", "action_approved")
    for durable in mesh.topology.partition_durables(spy_id):
        await spy.send(
            f"$JS.API.CONSUMER.MSG.NEXT.{work}.{durable}",
            json.dumps({"batch": 5, "no_wait": True, "group": "mesh"}).encode(),
            reply=target,
        )
    await asyncio.sleep(1)
    print("ERR2", spy.errors)
    print("CASES", (await op.jetstream().stream_info(cases)).state)
    # real message redirect
    case2 = await mesh.open(lapsed(new_ref("explore2")))
    await mesh.wait_for_event(case2, CaseClosed)
    target2 = mesh.subjects.case_event(f"crm-{new_ref('victim')}", "action_approved")
    for durable in mesh.topology.partition_durables(spy_id):
        await spy.send(
            f"$JS.API.CONSUMER.MSG.NEXT.{work}.{durable}",
            json.dumps({"batch": 1, "expires": 300_000_000, "group": "mesh"}).encode(),
            reply=target2,
        )
    await spy.send("$JS.API.INFO", b"", reply=target2)
    await spy.send(f"$JS.API.CONSUMER.INFO.{work}.{spy_id}_p0", b"", reply=target2)
    await asyncio.sleep(1.5)
    print("ERR3", spy.errors)
    info = await op.jetstream().stream_info(cases)
    for seq in range(4, info.state.last_seq + 1):
        r = await op.request(f"$JS.API.STREAM.MSG.GET.{cases}", json.dumps({"seq": seq}).encode())
        m = json.loads(r.data).get("message", {})
        print("C", seq, m.get("subject"), repr(base64.b64decode(m.get("hdrs", "") or "")), base64.b64decode(m.get("data", "") or "")[:100])
    info = await op.jetstream().stream_info(work)
    for seq in range(1, info.state.last_seq + 1):
        r = await op.request(f"$JS.API.STREAM.MSG.GET.{work}", json.dumps({"seq": seq}).encode())
        m = json.loads(r.data).get("message", {})
        print("W", seq, m.get("subject"), repr(base64.b64decode(m.get("hdrs", "") or ""))[:300])
    assert False
