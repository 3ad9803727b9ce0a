/**
 * The reference partner application (examples/partner-app), driven by the server's own webhook
 * provisioner: both halves of the wire are tested together, over real loopback HTTP.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { startPartnerApp, type PartnerApp, type PartnerAppOptions } from "../examples/partner-app/app.js";
import type { ProvisioningCall } from "../src/domain/ports.js";
import { createWebhookProvisioner, type WebhookProvisioner, type WebhookProvisionerOptions } from "../src/provisioning/webhook.js";

const secret = `whsec_${randomBytes(32).toString("base64")}`;
const otherSecret = `whsec_${randomBytes(32).toString("base64")}`;
const APP_TOKEN = `app-token-${randomBytes(8).toString("hex")}`;

// The server's result route, played by a loopback server that checks the bearer token.
interface ResultRequest {
  path: string;
  headers: IncomingHttpHeaders;
  body: unknown;
}
let resultServer: Server;
let serverUrl: string;
const resultRequests: ResultRequest[] = [];
let resultStatuses: number[] = [];

beforeAll(async () => {
  resultServer = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      resultRequests.push({ path: req.url ?? "", headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString("utf8")) });
      const status = req.headers.authorization === `Bearer ${APP_TOKEN}` ? (resultStatuses.shift() ?? 200) : 401;
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ status }));
    });
  });
  await new Promise<void>((resolve) => resultServer.listen(0, "127.0.0.1", resolve));
  serverUrl = `http://127.0.0.1:${(resultServer.address() as AddressInfo).port}`;
});
afterAll(async () => {
  resultServer.closeAllConnections();
  await new Promise((resolve) => resultServer.close(resolve));
});

let app: PartnerApp;
let provisioner: WebhookProvisioner;
const toClose: { close(): Promise<void> }[] = [];
const dirs: string[] = [];

async function start(overrides: Partial<PartnerAppOptions> = {}): Promise<PartnerApp> {
  const started = await startPartnerApp({
    secrets: [secret],
    port: 0,
    serverUrl,
    appToken: APP_TOKEN,
    resultRetry: { baseMs: 20, maxMs: 100 },
    ...overrides,
  });
  toClose.push(started);
  return started;
}

function provisionerFor(target: PartnerApp, overrides: Partial<WebhookProvisionerOptions> = {}): WebhookProvisioner {
  // Two secrets, as during a rotation: the application holds only one of them.
  const p = createWebhookProvisioner({ url: target.webhookUrl, secrets: [otherSecret, secret], timeoutMs: 2_000, ...overrides });
  toClose.push(p);
  return p;
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "partner-app-"));
  dirs.push(dir);
  return dir;
}

beforeEach(async () => {
  resultRequests.length = 0;
  resultStatuses = [];
  app = await start();
  provisioner = provisionerFor(app);
});
afterEach(async () => {
  await Promise.all(toClose.splice(0).map((c) => c.close()));
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function waitFor(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (check()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

// ---------------------------------------------------------------------------------------------
// Commands in the server's format

let seq = 0;
function command(type: string, data: Record<string, unknown>): ProvisioningCall {
  seq++;
  const body = JSON.stringify({ type, timestamp: "2026-11-30T01:52:00.000Z", data });
  return { id: `cmd_${seq}_${randomBytes(3).toString("hex")}`, type, body };
}

const offerPro = { code: "MBA-CAISSE-PRO", name: "Caisse Pro", plan: "pro" };
const offerStarter = { code: "MBA-CAISSE-STARTER", name: "Caisse Starter", plan: "starter" };
const customer = {
  id: "cu_1",
  orangeReference: "CUST-884201",
  tradingName: "Boulangerie Martin",
  organizationCode: "12345678900011",
  contacts: [{ id: "ct_1", orangeReference: "C-1", role: "admin", givenName: "Paul", familyName: "Martin", email: "paul@boulangerie-martin.example" }],
};

function provision(licences: Record<string, unknown>[] = [{ id: "us_1", endUser: { givenName: "Paul", email: "paul@boulangerie-martin.example" } }, { id: "us_2" }]) {
  return command("licences.provision", {
    request: { kind: "order", id: "po_1", orangeReference: "ORD-2026-000102", useCase: "UC2" },
    customer,
    fleet: { id: "fl_1", offer: offerPro },
    licences,
  });
}

function update(type: string, changes: [id: string, before: string, after: string, offer?: unknown][]) {
  return command(type, {
    request: { kind: "update", id: "lu_1", orangeReference: "UPD-2026-004411" },
    customer: { id: "cu_1" },
    licences: changes.map(([id, before, after, offer]) => ({
      id,
      fleetId: "fl_1",
      before: { state: before, offer: offerPro },
      after: { state: after, offer: offer ?? offerPro },
    })),
  });
}

const answered = (result: object) => {
  const { durationMs: _d, ...rest } = result as { durationMs: number };
  return rest;
};

// ---------------------------------------------------------------------------------------------

describe("partner app: signatures", () => {
  it("accepts a command signed with one of the server's secrets (rotation) and records its headers", async () => {
    const c = command("customer.upserted", { request: { kind: "order", id: "po_0" }, customer });
    expect(await provisioner.send(c)).toMatchObject({ outcome: "done", status: 200, licences: [] });
    expect(app.received).toHaveLength(1);
    expect(app.received[0]).toMatchObject({ id: c.id, type: "customer.upserted", verified: true, status: 200, replayed: false, body: c.body });
    expect(app.received[0]!.headers["webhook-id"]).toBe(c.id);
    expect(String(app.received[0]!.headers["webhook-signature"]).split(" ")).toHaveLength(2);
    expect(app.store.customers.cu_1).toMatchObject({ id: "cu_1", orangeReference: "CUST-884201", tradingName: "Boulangerie Martin", contacts: customer.contacts });
  });

  it("401 for another secret, an old or a future timestamp, or no signature; nothing is applied", async () => {
    const wrong = provisionerFor(app, { secrets: [otherSecret] });
    const r1 = await wrong.send(provision());
    expect(r1).toMatchObject({ outcome: "rejected", status: 401, error: expect.stringContaining("same webhook secret") });
    expect(r1.responseBody).toContain("No matching signature found");

    const now = Date.now();
    const old = provisionerFor(app, { clock: { now: () => new Date(now - 10 * 60_000) } });
    const r2 = await old.send(provision());
    expect(r2).toMatchObject({ outcome: "rejected", status: 401 });
    expect(r2.responseBody).toContain("Message timestamp too old");

    const future = provisionerFor(app, { clock: { now: () => new Date(now + 10 * 60_000) } });
    expect((await future.send(provision())).responseBody).toContain("Message timestamp too new");

    const bare = await fetch(app.webhookUrl, { method: "POST", headers: { "content-type": "application/json" }, body: provision().body });
    expect(bare.status).toBe(401);
    expect(await bare.json()).toEqual({ error: "invalid signature: Missing required headers" });

    expect(app.received.map((r) => [r.verified, r.status])).toEqual([
      [false, 401],
      [false, 401],
      [false, 401],
      [false, 401],
    ]);
    expect(app.store.licences).toEqual({});
    expect(app.store.answers).toEqual({});
  });

  it("400 for a signed body that is not a command, 422 for an unknown type", async () => {
    const notJson: ProvisioningCall = { id: "cmd_bad", type: "x", body: "not json" };
    expect(await provisioner.send(notJson)).toMatchObject({ outcome: "rejected", status: 400, responseBody: '{"error":"the body is not JSON"}' });
    expect(await provisioner.send(command("licences.explode", {}))).toMatchObject({
      outcome: "refused",
      status: 422,
      reason: expect.stringContaining('unknown command type "licences.explode"'),
    });
  });
});

describe("partner app: the seats", () => {
  it("provision, suspend, change offer, a mixed update, terminate: the answers and the store", async () => {
    expect(answered(await provisioner.send(command("customer.upserted", { request: { kind: "order", id: "po_0" }, customer })))).toEqual({
      outcome: "done",
      status: 200,
      licences: [],
      responseBody: '{"licences":[]}',
    });

    const provisioned = await provisioner.send(provision());
    expect(provisioned).toMatchObject({
      outcome: "done",
      status: 200,
      licences: [
        {
          id: "us_1",
          realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://app.example/c/cu_1/l/us_1" }] },
          login: { key: "login", value: "paul@boulangerie-martin.example" },
        },
        {
          id: "us_2",
          realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://app.example/c/cu_1/l/us_2" }] },
          login: { key: "login", value: "us_2@app.example" },
        },
      ],
    });
    expect(app.store.fleets.fl_1).toMatchObject({ id: "fl_1", customerId: "cu_1", offer: offerPro });
    expect(app.store.licences.us_1).toMatchObject({ state: "active", fleetId: "fl_1", customerId: "cu_1", offer: offerPro, endUser: { givenName: "Paul" } });
    expect(app.store.licences.us_2).toMatchObject({ state: "active", offer: offerPro });

    expect(await provisioner.send(update("licences.suspend", [["us_1", "active", "inactive"]]))).toMatchObject({ outcome: "done", licences: [] });
    expect(app.store.licences.us_1!.state).toBe("inactive");
    expect(app.store.licences.us_2!.state).toBe("active");

    expect(await provisioner.send(update("licences.change_offer", [["us_2", "active", "active", offerStarter]]))).toMatchObject({ outcome: "done" });
    expect(app.store.licences.us_2!.offer).toEqual(offerStarter);

    const mix = update("licences.update", [
      ["us_1", "inactive", "active"],
      ["us_2", "active", "terminated"],
    ]);
    expect(await provisioner.send(mix)).toMatchObject({ outcome: "done" });
    expect(app.store.licences.us_1!.state).toBe("active");
    expect(app.store.licences.us_2!.state).toBe("terminated");
    expect(app.store.licences.us_2!.login).toBeUndefined();

    // All or nothing: a terminated licence cannot come back, and its neighbour is left alone.
    const back = update("licences.update", [
      ["us_1", "active", "inactive"],
      ["us_2", "terminated", "active"],
    ]);
    expect(await provisioner.send(back)).toMatchObject({
      outcome: "refused",
      status: 409,
      reason: "licence us_2 is terminated in the application and cannot become active",
    });
    expect(app.store.licences.us_1!.state).toBe("active");

    expect(await provisioner.send(update("licences.terminate", [["us_1", "active", "terminated"]]))).toMatchObject({ outcome: "done" });
    expect(app.store.licences.us_1!.history.map((h) => [h.type, h.state])).toEqual([
      ["licences.provision", "active"],
      ["licences.suspend", "inactive"],
      ["licences.update", "active"],
      ["licences.terminate", "terminated"],
    ]);
    expect(app.store.licences.us_2!.history.map((h) => h.type)).toEqual(["licences.provision", "licences.change_offer", "licences.update"]);
  });

  it("keeps a resource the command already carries", async () => {
    const resource = { type: "url", characteristic: [{ name: "url", value: "https://caisse.example/boulangerie-martin" }] };
    const result = await provisioner.send(provision([{ id: "us_9", realizingResource: resource }]));
    expect(result.outcome === "done" && result.licences[0]?.realizingResource).toEqual(resource);
  });
});

describe("partner app: idempotency per webhook-id", () => {
  it("a repeated id gets the same answer and applies nothing twice", async () => {
    const c = provision();
    const first = await provisioner.send(c);
    const again = await provisioner.send(c);
    // The id is the key: even another body under the same id is answered from the first.
    const sameIdOtherBody = await provisioner.send({ ...c, body: update("licences.terminate", [["us_1", "active", "terminated"]]).body });

    expect(answered(again)).toEqual(answered(first));
    expect(answered(sameIdOtherBody)).toEqual(answered(first));
    expect(app.received.map((r) => [r.replayed, r.status])).toEqual([
      [false, 200],
      [true, 200],
      [true, 200],
    ]);
    expect(app.store.licences.us_1!.history).toHaveLength(1);
    expect(app.store.licences.us_1!.state).toBe("active");
  });

  it("survives a restart: the JSON store keeps the seats and the answers given", async () => {
    const dataDir = await tempDir();
    const first = await start({ dataDir });
    const c = provision();
    const answer = await provisionerFor(first).send(c);
    await first.close();
    const onDisk = JSON.parse(await readFile(join(dataDir, "partner-app-store.json"), "utf8")) as { licences: object };
    expect(Object.keys(onDisk.licences)).toEqual(["us_1", "us_2"]);

    const second = await start({ dataDir });
    expect(answered(await provisionerFor(second).send(c))).toEqual(answered(answer));
    expect(second.received[0]?.replayed).toBe(true);
    expect(second.store.licences.us_1!.history).toHaveLength(1);
  });
});

describe("partner app: behaviours", () => {
  it("refuse: 409 with the reason, nothing applied, and the refusal is the answer for that id", async () => {
    app.setMode({ mode: "refuse", reason: "no seat left on plan pro" });
    const c = provision();
    expect(await provisioner.send(c)).toMatchObject({ outcome: "refused", status: 409, reason: "no seat left on plan pro" });
    expect(app.store.licences).toEqual({});

    app.setMode({ mode: "ok" });
    expect(await provisioner.send(c)).toMatchObject({ outcome: "refused", reason: "no seat left on plan pro" });
    expect(await provisioner.send(provision())).toMatchObject({ outcome: "done" });
  });

  it("a rule: refuse any command that mentions a text, whatever the mode", async () => {
    app.setMode({ mode: "ok", refuseMentioning: "CUST-884201" });
    expect(await provisioner.send(provision())).toMatchObject({
      outcome: "refused",
      status: 409,
      reason: 'the application refuses commands that mention "CUST-884201"',
    });
    const other = command("customer.upserted", { customer: { id: "cu_2", orangeReference: "CUST-1" } });
    expect(await provisioner.send(other)).toMatchObject({ outcome: "done" });
    expect(Object.keys(app.store.customers)).toEqual(["cu_2"]);
  });

  it("down: 503, nothing recorded; the same id once up is carried out", async () => {
    app.setMode({ mode: "down" });
    const c = provision();
    expect(await provisioner.send(c)).toMatchObject({ outcome: "retry", status: 503, error: "HTTP 503" });
    expect(app.store.answers).toEqual({});
    expect(app.store.licences).toEqual({});

    app.setMode({ mode: "ok" });
    expect(await provisioner.send(c)).toMatchObject({ outcome: "done", status: 200 });
    expect(app.store.licences.us_1!.history).toHaveLength(1);
  });

  it("slow: the server's deadline passes; its retry gets the answer of the work already done, applied once", async () => {
    app.setMode({ mode: "slow", delayMs: 3_000 });
    const c = provision();
    const impatient = provisionerFor(app, { timeoutMs: 300 });
    expect(await impatient.send(c)).toMatchObject({ outcome: "retry", error: expect.stringContaining("no answer within 300 ms") });

    const retried = await provisioner.send(c);
    expect(retried).toMatchObject({ outcome: "done", status: 200, licences: [{ id: "us_1" }, { id: "us_2" }] });
    expect(app.store.licences.us_1!.history).toHaveLength(1);
    expect(app.received.map((r) => r.replayed)).toEqual([false, true]);
  });

  it("slow, within the deadline: the answer comes after the delay", async () => {
    app.setMode({ mode: "slow", delayMs: 200 });
    const result = await provisioner.send(provision());
    expect(result).toMatchObject({ outcome: "done" });
    expect(result.durationMs).toBeGreaterThanOrEqual(150);
  });

  it("the control API over HTTP: set, read, and a clear error for a bad setting", async () => {
    const post = (body: unknown) =>
      fetch(`${app.url}/control`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const set = await post({ mode: "down", delayMs: 10 });
    expect(set.status).toBe(200);
    expect(await set.json()).toEqual({ mode: "down", delayMs: 10 });
    expect(await (await fetch(`${app.url}/control`)).json()).toEqual({ mode: "down", delayMs: 10 });
    expect(await provisioner.send(provision())).toMatchObject({ outcome: "retry", status: 503 });

    const bad = await post({ mode: "sideways" });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: "mode must be one of ok, refuse, later, down, slow" });
    expect((await post({ mode: "slow", delayMs: -1 })).status).toBe(400);
    expect(app.behaviour()).toEqual({ mode: "down", delayMs: 10 });

    const seats = (await (await fetch(`${app.url}/store`)).json()) as { answers: object };
    expect(seats.answers).toEqual({});
    const commands = (await (await fetch(`${app.url}/commands`)).json()) as unknown[];
    expect(commands).toHaveLength(1);
  });
});

describe("partner app: later (202, then the result route)", () => {
  it("reports the result with the bearer token, retrying until the server takes it", async () => {
    resultStatuses = [503, 500];
    app.setMode({ mode: "later", delayMs: 50 });
    const c = provision();
    expect(await provisioner.send(c)).toMatchObject({ outcome: "accepted", status: 202 });
    // Asked again while the work is pending: the same 202, and still one result.
    expect(await provisioner.send(c)).toMatchObject({ outcome: "accepted", status: 202 });

    await waitFor("the result to be taken", () => resultRequests.length === 3 && Object.keys(app.store.pendingResults).length === 0);
    for (const r of resultRequests) {
      expect(r.path).toBe(`/admin/v1/provisioning/${c.id}/result`);
      expect(r.headers.authorization).toBe(`Bearer ${APP_TOKEN}`);
      expect(r.headers["content-type"]).toBe("application/json");
    }
    expect(resultRequests[2]!.body).toEqual({
      outcome: "completed",
      licences: [
        {
          id: "us_1",
          realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://app.example/c/cu_1/l/us_1" }] },
          login: { key: "login", value: "paul@boulangerie-martin.example" },
        },
        {
          id: "us_2",
          realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://app.example/c/cu_1/l/us_2" }] },
          login: { key: "login", value: "us_2@app.example" },
        },
      ],
    });
    expect(app.resultCalls.map((r) => r.status)).toEqual([503, 500, 200]);
    expect(app.store.licences.us_1!.history).toHaveLength(1);
    // A little later, nothing more was sent.
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(resultRequests).toHaveLength(3);
  });

  it("reports a failure with its reason and changes nothing; a 409 (already settled) ends the retries", async () => {
    resultStatuses = [409];
    app.setMode({ mode: "later", laterOutcome: "failed", reason: "the payment card was declined" });
    const c = provision();
    expect(await provisioner.send(c)).toMatchObject({ outcome: "accepted" });
    await waitFor("the result to be taken", () => Object.keys(app.store.pendingResults).length === 0);
    expect(resultRequests.map((r) => r.body)).toEqual([{ outcome: "failed", reason: "the payment card was declined" }]);
    expect(app.store.licences).toEqual({});
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(resultRequests).toHaveLength(1);
  });

  it("keeps retrying while the server refuses the token, and sends the right one", async () => {
    const wrongToken = await start({ appToken: "not-the-token", behaviour: { mode: "later" } });
    expect(await provisionerFor(wrongToken).send(provision())).toMatchObject({ outcome: "accepted" });
    await waitFor("three refused reports", () => wrongToken.resultCalls.filter((r) => r.status === 401).length >= 3);
    expect(resultRequests.every((r) => r.headers.authorization === "Bearer not-the-token")).toBe(true);
    expect(Object.keys(wrongToken.store.pendingResults)).toHaveLength(1);
  });

  it("a result still to report when the application stops is reported after its restart", async () => {
    const dataDir = await tempDir();
    const first = await start({ dataDir, behaviour: { mode: "later", delayMs: 400 } });
    const c = provision();
    expect(await provisionerFor(first).send(c)).toMatchObject({ outcome: "accepted" });
    await first.close();
    expect(resultRequests).toHaveLength(0);

    const second = await start({ dataDir });
    await waitFor("the result after the restart", () => resultRequests.length === 1 && Object.keys(second.store.pendingResults).length === 0);
    expect(resultRequests[0]!.path).toBe(`/admin/v1/provisioning/${c.id}/result`);
    expect(resultRequests[0]!.body).toMatchObject({ outcome: "completed", licences: [{ id: "us_1" }, { id: "us_2" }] });
    expect(second.store.licences.us_1!.history).toHaveLength(1);
  });

  it("later needs the server's URL and token", async () => {
    const alone = await start({ serverUrl: undefined, appToken: undefined });
    expect(() => alone.setMode({ mode: "later" })).toThrow("mode later needs the server's URL and the application's token");
  });
});
