"""What the log holds is printed as text: a subject or reason carrying Rich markup
neither breaks the audit report nor hides the check's name."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import mesh.cli  # noqa: F401  (loads the CLI's plug-ins in order, as `mesh` does)
from services.eventstore.audit import Report, Violation
from services.eventstore.cli import audit as cli


def test_markup_in_the_log_is_printed_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    output = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=output, width=300))
    report = Report(scope="*", events=1)
    report.violations.append(
        Violation("signature", "sequence 7 (on mesh.case.[/b].x)", "forged [bold]x[/bold]")
    )
    cli._print_report(report, as_json=False)
    text = output.getvalue()
    assert "[signature] sequence 7 (on mesh.case.[/b].x): forged [bold]x[/bold]" in text
    assert "FAILED" in text


def test_control_characters_from_the_log_never_reach_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=output, width=300))
    report = Report(scope="*", events=1)
    hidden = "\x1b[8m"  # conceal: the rest of the line, FAILED included, would vanish
    clipboard = "\x1b]52;c;ZXZpbA==\x07"  # OSC 52: write the auditor's clipboard
    report.violations.append(Violation("policy", f"event {hidden}x", f"rationale {clipboard}"))
    cli._print_report(report, as_json=False)
    text = output.getvalue()
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "event \\x1b[8mx" in text
    assert "\\x1b]52;c;ZXZpbA==\\x07" in text
    assert "FAILED" in text
