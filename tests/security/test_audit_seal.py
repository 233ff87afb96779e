"""Time is under the seal, and the verifier's report cannot be subverted (issue 10,
class 8). Who refuses: the audit verifier (`mesh audit verify --bundle`, offline),
naming what was changed; its readable output prints what the log holds, never
interprets it as markup."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from subprocess import CompletedProcess

import msgspec
import pytest
from rich.console import Console

from contracts import CaseClosed
from contracts.audit_bundle import AuditBundle
from services.eventstore.audit import Report
from services.eventstore.export import write_bundle
from services.stack.demo import DemoResult, print_summary
from tests.security.kit import Mesh, claim, new_ref

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


async def audit_verify(mesh: Mesh, bundle: AuditBundle, path: Path) -> CompletedProcess[str]:
    """`mesh audit verify --bundle FILE --store-key KEY`, as an auditor runs it."""
    write_bundle(bundle, path)
    store_key = mesh.key("eventstore").public_key
    return await mesh.cli("audit", "verify", "--bundle", str(path), "--store-key", store_key)


async def test_a_moved_time_and_a_changed_principal_are_named(mesh: Mesh, tmp_path: Path) -> None:
    """An exported case, verified clean; then one event's stored time moved back a day
    (key validity, suspension and revocation are judged by it), and an agent made an
    approver in the bundle's list of principals: both are named."""
    case_id = await mesh.open(claim(new_ref("seal")))
    await mesh.wait_for_event(case_id, CaseClosed)
    bundle = await mesh.bundle(case_id)
    assert mesh.verify(bundle).ok
    clean = await audit_verify(mesh, bundle, tmp_path / "clean.json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "verified" in clean.stdout

    moved = bundle.events[1]
    principals = [
        msgspec.structs.replace(p, kind="human", roles=["approver"])
        if p.keys.agent_id == "claims-intake"
        else p
        for p in bundle.principals
    ]
    tampered = msgspec.structs.replace(
        bundle,
        events=[
            msgspec.structs.replace(m, stored_at=m.stored_at - timedelta(days=1))
            if m.sequence == moved.sequence
            else m
            for m in bundle.events
        ],
        principals=principals,
    )
    report = mesh.verify(tampered)
    [time_moved] = [v for v in report.violations if "its time was moved" in v.problem]
    assert time_moved.check == "integrity"
    assert f"sequence {moved.sequence} " in time_moved.where
    [changed] = [v for v in report.violations if v.where == "principal claims-intake"]
    assert "differs from the sealed record in kind, roles" in changed.problem

    result = await audit_verify(mesh, tampered, tmp_path / "tampered.json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "its time was moved" in result.stdout
    assert "principal claims-intake: differs from the sealed record in kind, roles" in (
        result.stdout
    )


async def test_markup_in_the_log_is_printed_not_interpreted(mesh: Mesh, tmp_path: Path) -> None:
    """Intake publishes a message that is no event on a case subject holding Rich
    markup (`[/b]`). The verifier names it, and its readable output prints the subject
    and each check's name as they are: no traceback, nothing swallowed."""
    case_token = f"mark[/b]up-{uuid.uuid4().hex[:6]}"
    subject = f"{mesh.topology.root}.case.{case_token}.case_step_completed"
    intake = await mesh.connect("claims-intake")
    ack = await intake.js.publish(subject, b"[bold]not an event[/bold]")
    # The export waits for the store to have projected (and sealed) all of the log.
    bundle = await mesh.bundle(None)
    report = mesh.verify(bundle)
    [named] = [v for v in report.violations if f"sequence {ack.seq} " in v.where]
    assert subject in named.where

    result = await audit_verify(mesh, bundle, tmp_path / "all.json")
    output = result.stdout + result.stderr
    crashed = "Traceback" in output or "MarkupError" in output
    assert not crashed, f"mesh audit verify crashed on the log's markup:\n{output[-1500:]}"
    assert result.returncode == 1
    # Every violation is printed whole: its check's name in brackets, then the message.
    lines = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert len(lines) == len(report.violations)
    for line, violation in zip(lines, report.violations, strict=True):
        assert line == f"✗ {violation}", line
    assert f"✗ {named}" in lines


async def test_markup_in_the_log_does_not_break_the_demo_s_summary(mesh: Mesh) -> None:
    """The same message, as `mesh demo` ends: its summary prints the verification's
    violations, which name what the log holds."""
    case_token = f"mark[/b]up-{uuid.uuid4().hex[:6]}"
    subject = f"{mesh.topology.root}.case.{case_token}.case_step_completed"
    intake = await mesh.connect("claims-intake")
    ack = await intake.js.publish(subject, b"[bold]not an event[/bold]")
    report = mesh.verify(await mesh.bundle(None))
    [named] = [v for v in report.violations if f"sequence {ack.seq} " in v.where]
    result = DemoResult(
        cases=[],
        views={},
        elapsed=1.0,
        dead_letters=Counter(),
        approvals=Counter(),
        ledger=await mesh.ledger(),
        report=Report(scope=report.scope, violations=[named]),
        timed_out=False,
    )
    output = io.StringIO()
    print_summary(result, Console(file=output, width=400, soft_wrap=True))
    assert f"✗ {named}" in output.getvalue().splitlines()
