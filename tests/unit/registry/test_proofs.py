"""Key proofs on a registration: each is a signature over the request by a key the card
names; a bad one is refused, and so is a header carrying more than a card may list."""

from __future__ import annotations

import orjson
import pytest
from nats.aio.msg import Msg

from mesh._trust.identity import Identity
from mesh._trust.registry_client import KEY_PROOFS_HEADER
from mesh.errors import Refused, SignatureError
from services.registry.proofs import MAX_KEY_PROOFS, key_proofs
from services.registry.rules import MAX_CARD_KEYS

SUBJECT = "mesh.svc.registry.register"
BODY = b'{"agent_id": "intake"}'


def _request(keys: list[Identity], *, tamper: bool = False) -> Msg:
    proofs = {k.public_key: k.sign(SUBJECT, BODY) for k in keys}
    if tamper:
        first = keys[0].public_key
        proofs[first] = keys[-1].sign(SUBJECT, BODY)
    header = orjson.dumps(proofs).decode()
    return Msg(None, subject=SUBJECT, data=BODY, headers={KEY_PROOFS_HEADER: header})  # type: ignore[arg-type]


def test_every_proof_must_verify() -> None:
    keys = [Identity.generate() for _ in range(2)]
    assert key_proofs(_request(keys)) == {k.public_key for k in keys}
    with pytest.raises(SignatureError):
        key_proofs(_request(keys, tamper=True))


def test_no_more_proofs_than_a_card_may_list_keys() -> None:
    assert MAX_KEY_PROOFS == MAX_CARD_KEYS
    keys = [Identity.generate() for _ in range(MAX_KEY_PROOFS + 1)]
    with pytest.raises(Refused, match=f"at most {MAX_KEY_PROOFS}"):
        key_proofs(_request(keys))
    assert len(key_proofs(_request(keys[:MAX_KEY_PROOFS]))) == MAX_KEY_PROOFS
