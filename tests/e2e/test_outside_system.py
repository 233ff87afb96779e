"""An outside team connects a new system, as it would: an operator adds it with
`mesh principals add`; the team gets a credential file, a token and a connection file,
and with a stock NATS client (no mesh code), the documented inbox prefix and the JSON
Schema it opens a case, reads machine-readable refusals and its case's status — over
NATS and HTTP. Removed, it can do none of that any more."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import nats
import nats.errors
import pytest

from services.stack.stack import running_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "contracts" / "schema"


def _mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args], capture_output=True, text=True, timeout=60
    )


def _schema(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((SCHEMAS / f"{name}.json").read_text())
    return loaded


async def _connect(details: dict[str, str], keys: Path, patience: float) -> nats.NATS:
    """A stock client: the seed file, the URL and the inbox prefix from the connection
    file. The mesh takes a moment to load a new principal: retried for `patience`."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await nats.connect(
                details["nats_url"],
                nkeys_seed=str(keys / f"{details['principal']}.nk"),
                inbox_prefix=details["inbox_prefix"].encode(),
                allow_reconnect=False,
                connect_timeout=2,
            )
        except (nats.errors.Error, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_an_outside_team_connects_a_new_system(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "mesh") as stack:
        data_dir = str(stack.layout.data_dir)
        added = await asyncio.to_thread(
            _mesh, "principals", "add", "erp", "--role", "external", "--data-dir", data_dir
        )
        assert added.returncode == 0, added.stdout + added.stderr
        assert "reloaded: registry, ingress" in added.stdout + added.stderr
        keys = stack.layout.keys
        details = json.loads((keys / "erp.connection.json").read_text())
        assert details["inbox_prefix"] == "_INBOX.erp"
        assert details["nats_url"] == stack.url

        erp = await _connect(details, keys, patience=10)
        claim = {
            "kind": "insurance_claim",
            "external_ref": "ERP-1",
            "data": {
                "policy_number": "P-12345",
                "claimant": "B. Okafor",
                "claim_type": "auto",
                "amount_cents": 12_000,
                "incident_date": "2026-10-01",
                "payee_account": "NL91-ABNA0417164300",
            },
        }
        jsonschema.validate(claim, _schema("ingress_open_case_request"))
        jsonschema.validate(claim["data"], _schema("ingress_claim_data"))
        opening = details["open_a_case"]["nats_request"]
        reply = json.loads((await erp.request(opening, json.dumps(claim).encode(), 10)).data)
        jsonschema.validate(reply, _schema("ingress_reply"))
        assert reply["ok"], reply
        assert reply["case_id"] == "erp-ERP-1"

        # A refusal a machine can act on: a JSON path and a code per error.
        bad = dict(claim, external_ref="ERP-2", data={**claim["data"], "amount_cents": "lots"})
        refused = json.loads((await erp.request(opening, json.dumps(bad).encode(), 10)).data)
        jsonschema.validate(refused, _schema("ingress_reply"))
        assert not refused["ok"]
        assert refused["problems"][0]["path"] == "$.data.amount_cents"
        assert refused["problems"][0]["code"]
        assert refused["errors"]

        # The status of its own case, until the mesh has ended it.
        asking = details["case_status"]["nats_request"]
        deadline = time.monotonic() + 60
        while True:
            status = json.loads((await erp.request(asking, b'{"external_ref": "ERP-1"}', 10)).data)
            jsonschema.validate(status, _schema("ingress_case_status_reply"))
            assert status["ok"], status
            if status["status"] == "closed":
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.3)
        assert status["case_id"] == "erp-ERP-1"
        assert status["outcome"]
        # Another system's case is simply not found.
        other = json.loads((await erp.request(asking, b'{"external_ref": "CLM-1"}', 10)).data)
        assert other["problems"][0]["code"] == "not_found"

        # A stock client without the inbox prefix gets no reply: the broker lets a
        # principal read only its own inbox.
        plain = await nats.connect(
            details["nats_url"],
            nkeys_seed=str(keys / "erp.nk"),
            allow_reconnect=False,
            connect_timeout=2,
        )
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await plain.request(asking, b'{"external_ref": "ERP-1"}', 2)
        await plain.close()

        token = (keys / "erp.http-token").read_text().strip()
        bearer = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=stack.ingress_http, timeout=10) as http:
            created = await http.post(
                "/v1/cases/erp",
                content=json.dumps(dict(claim, external_ref="ERP-3")).encode(),
                headers=bearer,
            )
            assert created.status_code == 201, created.text
            seen = await http.get("/v1/cases/erp/ERP-1", headers=bearer)
            assert seen.status_code == 200
            assert seen.json()["status"] == "closed"
            assert (await http.get("/v1/cases/erp/ERP-1")).status_code == 401
            crm_token = stack.layout.http_token("crm")
            wrong = {"Authorization": f"Bearer {crm_token}"}
            assert (await http.get("/v1/cases/erp/ERP-1", headers=wrong)).status_code == 401

            listed = await asyncio.to_thread(
                _mesh, "principals", "list", "--json", "--data-dir", data_dir
            )
            assert {"name": "erp", "role": "external"}.items() <= next(
                p for p in json.loads(listed.stdout) if p["name"] == "erp"
            ).items()

            # Removed: no connection, no HTTP, and its name is never given out again.
            removed = await asyncio.to_thread(
                _mesh, "principals", "remove", "erp", "--data-dir", data_dir
            )
            assert removed.returncode == 0, removed.stdout + removed.stderr
            deadline = time.monotonic() + 10
            while (await http.get("/v1/cases/erp/ERP-1", headers=bearer)).status_code != 401:
                assert time.monotonic() < deadline, "the token still works"
                await asyncio.sleep(0.2)
        deadline = time.monotonic() + 10
        while erp.is_connected:  # the broker drops a user it no longer knows
            assert time.monotonic() < deadline, "still connected after removal"
            await asyncio.sleep(0.2)
        with pytest.raises((nats.errors.Error, OSError)):
            await _connect(details, keys, patience=0)
        again = await asyncio.to_thread(
            _mesh, "principals", "add", "erp", "--role", "external", "--data-dir", data_dir
        )
        assert again.returncode == 2
        assert "taken" in again.stdout + again.stderr
        await erp.close()
