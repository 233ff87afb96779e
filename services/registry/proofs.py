"""What a registry request proves about who sent it, read from its headers: the
operator's signed statement behind a status change or an approval, the enrolment grant
a registration carries, and the keys that co-signed it. A signature that does not
verify raises SignatureError (the handlers refuse the request with it); a header that
does not parse is a refusal; a statement not signed by an operator is a refusal.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from nats.aio.msg import Msg

from contracts.cards import SignedStatement
from contracts.registry_api import GRANT_HEADER
from mesh.service import (
    KEY_PROOFS_HEADER,
    SIGNATURE_HEADER,
    Refused,
    signing_operator,
    verify,
    verify_headers,
)
from services.registry.rules import MAX_CARD_KEYS

_statement = msgspec.json.Decoder(SignedStatement)
# A card lists at most this many keys: no registration proves more.
MAX_KEY_PROOFS = MAX_CARD_KEYS


def signed_request(msg: Msg) -> SignedStatement:
    """The request as its signer signed it (subject and body), kept as evidence of who
    asked: anyone holding the signer's public key checks it offline."""
    signer = verify_headers(msg.subject, msg.data, msg.headers)
    return SignedStatement.of(msg.subject, msg.data, signer, (msg.headers or {})[SIGNATURE_HEADER])


def operator_statement(
    msg: Msg, operators: Mapping[str, str], what: str
) -> tuple[SignedStatement, str]:
    """The operator's signed request, kept as the evidence of its consent, and the
    operator's id (`operators`: public key -> operator id)."""
    signer = verify_headers(msg.subject, msg.data, msg.headers)
    signature = (msg.headers or {})[SIGNATURE_HEADER]
    statement = SignedStatement.of(msg.subject, msg.data, signer, signature)
    operator = signing_operator(statement, operators)
    if operator is None:
        raise Refused(f"{what} needs an operator's signature; {signer} is not an operator")
    return statement, operator


def enrolment_grant(msg: Msg) -> SignedStatement | None:
    """The enrolment grant a registration carries (header Mesh-Enrolment-Grant)."""
    raw = (msg.headers or {}).get(GRANT_HEADER)
    if not raw:
        return None
    try:
        return _statement.decode(raw.encode())
    except msgspec.DecodeError as exc:
        raise Refused(f"unreadable {GRANT_HEADER} header: {exc}") from None


def key_proofs(msg: Msg) -> frozenset[str]:
    """Keys that signed the request besides its signer (header Mesh-Key-Proofs, a JSON
    object public key -> signature over the same subject and body). A bad proof is an
    error, not a silently missing key."""
    raw = (msg.headers or {}).get(KEY_PROOFS_HEADER)
    if not raw:
        return frozenset()
    try:
        proofs = msgspec.json.decode(raw.encode(), type=dict[str, str])
    except msgspec.DecodeError as exc:
        raise Refused(f"unreadable {KEY_PROOFS_HEADER} header: {exc}") from None
    if len(proofs) > MAX_KEY_PROOFS:
        # Each proof costs a signature check: an unbounded header is free work for anyone.
        raise Refused(f"{len(proofs)} key proofs; at most {MAX_KEY_PROOFS} are read")
    for public_key, signature in proofs.items():
        verify(public_key, msg.subject, msg.data, signature)
    return frozenset(proofs)
