// Opening a case from another system, in JavaScript: only a NATS client and the
// contract (contracts/schema/ingress_open_case_request.json, ingress_claim_data.json,
// ingress_reply.json). No code of the mesh.
//
//   npm install nats
//   MESH_NATS_URL=nats://127.0.0.1:PORT MESH_SEED_FILE=.mesh/up/keys/crm.nk \
//     node deploy/examples/open-case.mjs CLM-2026-0001
//
// The sender is the `crm` principal: it authenticates with its nkey, may publish on
// `<root>.svc.ingress.crm` and nowhere else, and receives replies under _INBOX.crm.
import { readFileSync } from "node:fs";
import { connect, nkeyAuthenticator, JSONCodec } from "nats";

const source = "crm";
const root = process.env.MESH_SUBJECT_ROOT ?? "mesh";
const seed = readFileSync(process.env.MESH_SEED_FILE, "utf8").trim();
const nc = await connect({
  servers: process.env.MESH_NATS_URL,
  authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
  inboxPrefix: `_INBOX.${source}`,
});

const request = {
  kind: "insurance_claim",
  external_ref: process.argv[2] ?? "CLM-2026-0001", // the same ref never opens two cases
  data: {
    policy_number: "P-48213",
    claimant: "Ada Lovelace",
    claim_type: "auto",
    amount_cents: 64_250,
    currency: "EUR",
    incident_date: "2026-11-02",
    description: "rear-ended at a light",
    payee_account: "DE89-37040044",
  },
};

const codec = JSONCodec();
const reply = codec.decode(
  (await nc.request(`${root}.svc.ingress.${source}`, codec.encode(request), { timeout: 5000 })).data,
);
if (reply.ok) {
  console.log(`case ${reply.case_id} opened (event ${reply.event_id})${reply.duplicate ? ", already" : ""}`);
} else {
  console.error(`refused: ${reply.errors.join("; ")} (kept as dead letter ${reply.dead_letter})`);
  process.exitCode = 1;
}
await nc.close();
