"""Text from the log (or from anyone else) on a person's terminal.

Whatever a peer wrote — a subject, an id, a reason, evidence — is shown as what it is:
Rich markup is escaped (a "[/b]" must not break the output or hide a check's name),
and control characters are made visible as `\\x..`/`\\u....` instead of reaching the
terminal, where an escape sequence could hide the rest of a line (a FAILED verdict),
rewrite it, or write to the clipboard, and a bidi override could reorder what is read.
"""

from __future__ import annotations

import re

from rich.markup import escape

# C0 and C1 controls, DEL, and the invisible bidi controls and overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """`text`, safe to print with Rich (markup escaped, controls made visible)."""
    return escape(_UNSAFE.sub(_visible, text))
