"""The request/reply server every service answers with: a definite answer to every
request, and only ever on the requester's inbox."""

from __future__ import annotations

import logging

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client

from contracts.errors import InvalidSubject
from mesh._broker.topology import Topology
from mesh._runtime.endpoints import Request, RequestServer
from mesh.errors import BrokerError, Refused
from mesh.testing import eventually


class Echo(msgspec.Struct, frozen=True):
    text: str


def _refusal(reason: str) -> bytes:
    return msgspec.json.encode({"ok": False, "error": reason})


async def _echo(request: Request) -> bytes:
    echo = msgspec.json.decode(request.body, type=Echo)
    if echo.text == "no":
        raise Refused("you said no")
    if echo.text == "subject":
        raise InvalidSubject("a.b", "bad")
    if echo.text == "broker":
        raise BrokerError("fetch", "timed out")
    if echo.text == "bug":
        raise KeyError("oops")
    return msgspec.json.encode({"ok": True, "text": echo.text, "asker": request.principal})


@pytest.fixture
async def server(nc: Client, topology: Topology):  # type: ignore[no-untyped-def]
    server = RequestServer(nc, topology.subjects, "echo", _refusal)
    server.route("say", _echo)
    server.route("mine", _echo, as_principal=True)
    await server.start()
    yield server
    await server.stop()


async def _ask(nc: Client, subject: str, body: bytes) -> dict[str, object]:
    reply = await nc.request(subject, body, timeout=5)
    answer: dict[str, object] = msgspec.json.decode(reply.data)
    return answer


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"text": "hi"}', {"ok": True, "text": "hi", "asker": ""}),
        (b'{"text": "no"}', {"ok": False, "error": "you said no"}),
        (b"{", {"ok": False}),
        (b'{"text": 3}', {"ok": False}),
        (b"[" * 100_000, {"ok": False}),
        (b'{"text": "subject"}', {"ok": False}),
        (b'{"text": "broker"}', {"ok": False, "error": "echo could not say now: fetch: timed out"}),
        (b'{"text": "bug"}', {"ok": False, "error": "echo could not say: KeyError('oops')"}),
    ],
)
async def test_every_request_gets_a_definite_answer(
    nc: Client, topology: Topology, server: RequestServer, body: bytes, expected: dict[str, object]
) -> None:
    answer = await _ask(nc, topology.subjects.service("echo", "say"), body)
    assert expected.items() <= answer.items()
    if body in (b"{", b'{"text": 3}', b'{"text": "subject"}'):
        assert str(answer["error"]).startswith("malformed say request")


async def test_an_operation_asked_under_a_name_carries_it(
    nc: Client, topology: Topology, server: RequestServer
) -> None:
    subject = topology.subjects.service_as("echo", "mine", "ada")
    assert await _ask(nc, subject, b'{"text": "hi"}') == {"ok": True, "text": "hi", "asker": "ada"}


async def test_an_unknown_operation_is_not_served(
    nc: Client, topology: Topology, server: RequestServer
) -> None:
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(topology.subjects.service("echo", "other"), b"{}", timeout=2)


async def test_a_reply_subject_that_is_no_inbox_gets_nothing(
    nc: Client, topology: Topology, server: RequestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mesh._runtime.replies")
    target = topology.subjects.case_event("victim", "case_closed")
    landed = await nc.subscribe(target)
    await nc.publish(topology.subjects.service("echo", "say"), b'{"text": "hi"}', reply=target)
    await nc.flush()
    await eventually(lambda: "replies go only to _INBOX." in caplog.text or None, timeout=5)
    await nc.flush()
    assert landed.pending_msgs == 0


async def test_a_refusal_quoting_a_huge_request_still_reaches_the_asker(
    nc: Client, topology: Topology
) -> None:
    async def quoting(request: Request) -> bytes:
        raise Refused(f"no such thing: {request.body!r}")

    server = RequestServer(nc, topology.subjects, "echo", _refusal)
    server.route("quote", quoting)
    await server.start()
    try:
        body = b"\x7f" * 250_000  # its repr is four times longer, its JSON five
        answer = await _ask(nc, topology.subjects.service("echo", "quote"), body)
    finally:
        await server.stop()
    assert answer["ok"] is False
    assert str(answer["error"]).endswith("characters in all)")
    assert len(str(answer["error"])) < 1100


async def test_an_answer_too_large_to_send_becomes_a_definite_refusal(
    nc: Client, topology: Topology
) -> None:
    async def huge(request: Request) -> bytes:
        return b"x" * (nc.max_payload + 1)

    server = RequestServer(nc, topology.subjects, "echo", _refusal)
    server.route("huge", huge)
    await server.start()
    try:
        answer = await _ask(nc, topology.subjects.service("echo", "huge"), b"{}")
    finally:
        await server.stop()
    assert answer == {"ok": False, "error": "echo could not send its answer to huge"}


async def test_a_named_request_is_answered_only_on_the_askers_own_inbox(
    nc: Client, topology: Topology
) -> None:
    server = RequestServer(nc, topology.subjects, "echo", _refusal, private_replies=True)
    server.route("mine", _echo, as_principal=True)
    await server.start()
    try:
        subject = topology.subjects.service_as("echo", "mine", "ada")
        victim = await nc.subscribe("_INBOX.bob.>")
        await nc.publish(subject, b'{"text": "hi"}', reply="_INBOX.bob.stolen")
        own = await nc.subscribe("_INBOX.ada.>")
        await nc.publish(subject, b'{"text": "hi"}', reply="_INBOX.ada.mine")
        # Answered in order: the asker's answer arrived, so bob's would have by now.
        answer = msgspec.json.decode((await own.next_msg(timeout=5)).data)
        await nc.flush()
        assert victim.pending_msgs == 0
    finally:
        await server.stop()
    assert answer == {"ok": True, "text": "hi", "asker": "ada"}
