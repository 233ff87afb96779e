"""Who writes the registry: it runs active/standby, and the active is whoever holds
the writer lease — one key in a KV bucket whose entries expire (`max_age` = the lease
timeout).

- Taking it is the server's compare-and-set: `create` stores the key only if nobody
  holds it, so of two standbys trying at once exactly one gets it.
- Holding it is renewing it well within the timeout with `update(last=revision)`: an
  update on any other revision (the key expired and someone else took it) is refused,
  and the holder stands down.
- A dead or frozen holder stops renewing; the server drops its entry after the timeout,
  and a standby's `create` then succeeds. Nothing of ours decides it: the stream's
  retention does.
- The holder judges its own term by its own clock: it is valid until the timeout after
  the renewal was *sent* (the server started the entry's clock later than that), so a
  holder frozen past its term finds, when it wakes, that it may not write any more —
  before its first write, not after.

- The key's value is the holder's name signed with a registry key. The bucket takes
  whatever lands on its subject — a JetStream API answer sent there by anyone who can
  make a request with a reply subject of their choosing — so a value that is not a
  signed lease counts for nothing: the holder renews over it, a standby takes it.

The lease keeps one writer at a time and gives readers one current answer. It is not
what keeps the history whole: each append is conditional on the registry stream's
newest sequence (store.py), so a write by a holder whose term ended while its request
was in flight is refused by the stream, never interleaved.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from mesh.service import (
    Identity,
    MeshError,
    SignatureError,
    Topology,
    broker_errors,
    client_of,
    ensure_key_value,
    verify,
)

log = logging.getLogger(__name__)

WRITER_KEY = "writer"
LEASE_STATEMENT = "agent-mesh.registry-writer-lease"  # what a lease's signature covers


def lease_bucket(topology: Topology) -> str:
    return f"{topology.root.upper()}_REGISTRY_WRITER"


class NotTheWriter(MeshError):
    """This registry's term as the writer has ended (or never began): it must not write.
    Asking again reaches the writer that took over."""

    retryable = True


class WriterLease:
    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        timeout: float,
        identity: Identity,
        writers: frozenset[str],
    ) -> None:
        """`identity` signs this registry's leases; `writers`: the registry keys whose
        signed leases count."""
        self.js = js
        self.topology = topology
        self.timeout = timeout
        self.writers = writers
        # Who holds it, for the operator reading the bucket (host, pid), and which
        # instance (two in one process are two registries), signed.
        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.holder = json.dumps(
            {
                "holder": holder,
                "signer": identity.public_key,
                "signature": identity.sign(LEASE_STATEMENT, holder.encode()),
            }
        ).encode()
        self._kv: KeyValue | None = None
        self._revision = 0
        self._valid_until = 0.0  # monotonic

    async def open(self) -> None:
        config = KeyValueConfig(
            bucket=lease_bucket(self.topology),
            history=1,
            ttl=self.timeout,
            storage=StorageType.FILE,
            replicas=self.topology.replicas,
        )
        await ensure_key_value(self.js, config)
        # A renewal that the broker does not answer must not outlast the term it is
        # renewing: a few tries fit in one.
        patient_enough = client_of(self.js).jetstream(timeout=self.timeout / 4)
        self._kv = await patient_enough.key_value(config.bucket)

    @property
    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def check(self) -> None:
        """Before each write: raises unless this registry's term is still running."""
        if not self.held:
            raise NotTheWriter("this registry's term as the writer has ended")

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this registry holds it now."""
        assert self._kv is not None, "open() first"
        sent = time.monotonic()
        with broker_errors("take the registry's writer lease"):
            try:
                self._revision = await self._kv.create(WRITER_KEY, self.holder)
            except nats.js.errors.KeyWrongLastSequenceError:
                if not await self._reclaim(stray_too=True):
                    return False  # somebody holds it
        self._valid_until = sent + self.timeout
        return True

    async def renew(self) -> bool:
        """Renew the term; False (and the term ended) once the lease is somebody else's
        or the broker could not confirm the renewal."""
        assert self._kv is not None, "open() first"
        sent = time.monotonic()
        try:
            try:
                self._revision = await self._kv.update(WRITER_KEY, self.holder, last=self._revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Somebody else's lease — or still ours (a renewal whose answer was
                # lost), or a stray value over ours, renewed over while the term still
                # runs (after it, a standby may hold the lease meanwhile).
                if not await self._reclaim(stray_too=self.held):
                    log.warning("the registry's writer lease was taken over")
                    self._valid_until = 0.0
                    return False
        except (nats.errors.Error, TimeoutError) as exc:
            # Not confirmed: the term still runs out on its own clock; try again.
            log.warning("writer lease not renewed just now: %r", exc)
            return self.held
        self._valid_until = sent + self.timeout
        return True

    async def _reclaim(self, *, stray_too: bool) -> bool:
        """Write our lease over the key's entry (by its revision: of two registries
        doing so at once, one wins) if it is our own lease — a renewal stored whose
        answer was lost — or, with `stray_too`, a value no registry signed. True if
        we did."""
        assert self._kv is not None
        try:
            entry = await self._kv.get(WRITER_KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return False  # expired meanwhile: `create` takes it on the next try
        if entry.value != self.holder:
            if not stray_too or self.is_lease(entry.value):
                return False  # somebody else's
            log.warning(
                "the registry's writer lease key holds a value no registry signed "
                "(revision %s); written over",
                entry.revision,
            )
        try:
            self._revision = await self._kv.update(WRITER_KEY, self.holder, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    def is_lease(self, value: bytes | None) -> bool:
        """Whether `value` is a lease a registry signed."""
        try:
            lease = json.loads(value or b"")
            signer = lease["signer"]
            verify(signer, LEASE_STATEMENT, str(lease["holder"]).encode(), lease["signature"])
        except (ValueError, KeyError, TypeError, SignatureError):
            return False
        return signer in self.writers

    async def release(self) -> None:
        """On a clean stop: a standby need not wait for the timeout."""
        if self._kv is None or not self.held:
            return
        self._valid_until = 0.0
        try:
            # Only our own revision: a lease somebody else holds by now stays theirs.
            await self._kv.delete(WRITER_KEY, last=self._revision)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("writer lease not released (it expires on its own): %r", exc)
