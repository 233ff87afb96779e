"""A request body as it was received, and what of it the dead-letter stream keeps (pure).

A refused body is kept byte for byte if it is within the size limit. A larger one is
kept as its first bytes, with these headers beside the dead letter's own:

    Mesh-Dlq-Size       how many bytes were received
    Mesh-Dlq-Digest     sha256:<hex> of all of them
    Mesh-Dlq-Truncated  true: the body kept is only the first bytes
    Mesh-Dlq-Cut-Off    true: the sender sent more, and reading stopped (size and digest
                        are of what was read)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SIZE = "Mesh-Dlq-Size"
DIGEST = "Mesh-Dlq-Digest"
TRUNCATED = "Mesh-Dlq-Truncated"
CUT_OFF = "Mesh-Dlq-Cut-Off"


@dataclass(frozen=True)
class ReceivedBody:
    head: bytes  # the body, or its start when it is too large to hold
    size: int  # bytes received
    sha256: str  # hex digest of all bytes received
    complete: bool = True  # False: the sender sent more than was read

    @classmethod
    def of(cls, data: bytes) -> ReceivedBody:
        return cls(head=data, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def kept(self, *, whole_up_to: int, prefix: int) -> tuple[bytes, dict[str, str]]:
        """The bytes to keep and the headers that describe them: all of the body if it
        is at most `whole_up_to` bytes, else its first `prefix` bytes."""
        headers = {SIZE: str(self.size), DIGEST: f"sha256:{self.sha256}"}
        if not self.complete:
            headers[CUT_OFF] = "true"
        if self.complete and self.size == len(self.head) and self.size <= whole_up_to:
            return self.head, headers
        headers[TRUNCATED] = "true"
        return self.head[:prefix], headers
