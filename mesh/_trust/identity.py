"""ed25519 identities as NATS nkeys, and signatures over `subject + body`.

The same user nkey that authenticates an agent to NATS signs what it publishes. The
signed bytes are `subject`, a newline, then the exact body bytes stored in the stream:
no canonical JSON is needed, and verification on replay uses the stored bytes.
(A subject can hold no whitespace, so the newline makes the split unambiguous.)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import secrets
import threading
from pathlib import Path

import nacl.exceptions
import nacl.signing
import nkeys

from mesh.errors import ConfigurationError, SignatureError

SIGNATURE_HEADER = "Mesh-Signature"
SIGNER_HEADER = "Mesh-Signer"


def signed_bytes(subject: str, body: bytes) -> bytes:
    return subject.encode() + b"\n" + body


def message_digest(subject: str, body: bytes) -> str:
    """sha256 (hex) of exactly what was signed and stored: what a decision and a human's
    approval cite, so that what runs is byte for byte what was judged."""
    return hashlib.sha256(signed_bytes(subject, body)).hexdigest()


class Identity:
    """A private nkey: signs events and authenticates a NATS connection."""

    def __init__(self, seed: str | bytes) -> None:
        seed_bytes = seed.encode() if isinstance(seed, str) else bytes(seed)
        try:
            self._keypair = nkeys.from_seed(bytearray(seed_bytes))
            self.public_key: str = self._keypair.public_key.decode()
        except (nkeys.NkeysError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"not a valid nkey seed: {exc!r}") from None
        self._seed = seed_bytes

    @classmethod
    def generate(cls) -> Identity:
        raw = nacl.signing.SigningKey.generate().encode()
        seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER)
        return cls(seed)

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            return cls(path.read_text().strip())
        except OSError as exc:
            raise ConfigurationError(f"cannot read seed file {path}: {exc}") from exc

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The key at `path`, made there first if there is none. Replicas of one agent
        starting at once all end up with the one key that was linked into place first."""
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        identity.save(partial)
        try:
            os.link(partial, path)  # atomic: fails if another process made it first
        except FileExistsError:
            return cls.load(path)
        finally:
            partial.unlink(missing_ok=True)
        return identity

    @property
    def seed(self) -> str:
        return self._seed.decode()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 from the start: a seed must never be world-readable, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.seed + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def sign(self, subject: str, body: bytes) -> str:
        signature: bytes = self._keypair.sign(signed_bytes(subject, body))
        return base64.urlsafe_b64encode(signature).decode()

    @functools.cached_property
    def id_key(self) -> bytes:
        """A secret derived from the seed that keys this principal's derived event ids
        (contracts.ids.derived_event_id): deterministic for it, unpredictable for others."""
        return hashlib.blake2b(self._seed, digest_size=32, person=b"mesh-event-ids").digest()

    def signature_headers(self, subject: str, body: bytes) -> dict[str, str]:
        return {SIGNATURE_HEADER: self.sign(subject, body), SIGNER_HEADER: self.public_key}


@functools.lru_cache(maxsize=4096)
def _verify_key(public_key: str) -> nacl.signing.VerifyKey:
    """Decode a user public nkey ("U…") with its checksum, as nkeys does."""
    try:
        raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except (ValueError, TypeError):
        raise ValueError("not base32") from None
    if len(raw) != 35 or raw[0] != nkeys.PREFIX_BYTE_USER:
        raise ValueError("not a user public nkey")
    body, checksum = raw[:-2], raw[-2:]
    if int.from_bytes(checksum, "little") != nkeys.crc16(bytearray(body)):
        raise ValueError("checksum mismatch")
    return nacl.signing.VerifyKey(bytes(body[1:]))


def is_user_public_key(value: str) -> bool:
    """An nkey user public key ("U…") whose checksum holds."""
    try:
        _verify_key(value)
    except ValueError:
        return False
    return True


# Signatures already verified in this process: a case's events are checked by every hop
# that reads the case, and an ed25519 verify costs ~55 µs against ~2 µs to hash the
# body. Keyed by everything the verdict depends on; only successes are kept; bounded.
_VERIFIED: dict[tuple[str, str, str, bytes], None] = {}
_VERIFIED_MAX = 16_384
_VERIFIED_LOCK = threading.Lock()  # verifying may run in worker threads too


def verify(public_key: str, subject: str, body: bytes, signature: str) -> None:
    """Raise SignatureError unless `signature` is `public_key`'s over subject + body."""
    seen = (public_key, signature, subject, hashlib.blake2b(body, digest_size=20).digest())
    if seen in _VERIFIED:
        return
    try:
        key = _verify_key(public_key)
    except ValueError as exc:
        raise SignatureError(subject, f"bad signer key {public_key!r}: {exc}") from None
    try:
        raw_signature = base64.urlsafe_b64decode(signature)
        key.verify(signed_bytes(subject, body), raw_signature)
    except (ValueError, TypeError, nacl.exceptions.BadSignatureError):
        raise SignatureError(subject, f"signature does not match signer {public_key}") from None
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.pop(next(iter(_VERIFIED)))  # the oldest: dicts keep insertion order
        _VERIFIED[seen] = None


def verify_headers(subject: str, body: bytes, headers: dict[str, str] | None) -> str:
    """Verify the signature carried in message headers; return the signer's public key."""
    headers = headers or {}
    signature = headers.get(SIGNATURE_HEADER)
    signer = headers.get(SIGNER_HEADER)
    if not signature or not signer:
        raise SignatureError(subject, "unsigned: missing Mesh-Signature or Mesh-Signer header")
    verify(signer, subject, body, signature)
    return signer
