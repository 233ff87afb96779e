"""Who may use the ingress over HTTP, as which source: a bearer token per source.

Only the tokens' SHA-256 digests are held (and written to the tokens file): a leaked
file or a memory dump does not hand out credentials. The file is re-read on SIGHUP,
which `mesh principals add|remove` sends, so that a new outside system can connect
without a restart and a removed one cannot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from mesh.service import ConfigurationError, write_atomically

log = logging.getLogger(__name__)

_PREFIX = "sha256:"


def token_digest(token: str) -> str:
    return _PREFIX + hashlib.sha256(token.encode()).hexdigest()


def write_token_digests(path: Path, digests: Mapping[str, str]) -> None:
    write_atomically(path, json.dumps(dict(sorted(digests.items())), indent=2) + "\n", 0o600)


def read_token_digests(path: Path) -> dict[str, str]:
    """The file: a JSON object {"<source>": "sha256:<hex>"}."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"HTTP tokens file {path}: {exc}") from exc
    if not isinstance(rows, dict) or not all(
        isinstance(v, str) and v.startswith(_PREFIX) for v in rows.values()
    ):
        raise ConfigurationError(
            f'HTTP tokens file {path}: expected {{"<source>": "sha256:<hex>"}}'
        )
    return {str(k): v for k, v in rows.items()}


class BearerTokens:
    def __init__(self, plain: Mapping[str, str], file: Path | None = None) -> None:
        self.plain = {source: token_digest(token) for source, token in plain.items()}
        self.file = file
        self.digests: dict[str, str] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read the file; one that does not load keeps the tokens in force."""
        digests = dict(self.plain)
        if self.file is not None:
            try:
                digests.update(read_token_digests(self.file))
            except ConfigurationError as exc:
                if self.digests:
                    log.error("HTTP tokens not reloaded, the ones in force stay: %s", exc)  # noqa: TRY400
                    return
                raise
        self.digests = digests

    def allows(self, source: str, given: str) -> bool:
        expected = self.digests.get(source)
        return expected is not None and hmac.compare_digest(
            token_digest(given).encode(), expected.encode()
        )

    def source_of(self, given: str) -> str | None:
        """The source whose token `given` is, if any (every digest compared, in constant
        time each: a system that adds to another's case is known by its own token)."""
        digest = token_digest(given).encode()
        found = None
        for source, expected in sorted(self.digests.items()):
            if hmac.compare_digest(digest, expected.encode()):
                found = found or source
        return found
