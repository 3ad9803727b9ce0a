import { randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import pino from "pino";
import { Webhook } from "standardwebhooks";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { ProvisioningCall } from "../src/domain/ports.js";
import {
  createWebhookProvisioner,
  parseWebhookSecrets,
  readAppLicences,
  type WebhookProvisionerOptions,
} from "../src/provisioning/webhook.js";
import { freePort } from "../src/simulator/self-host.js";

const secretA = `whsec_${randomBytes(32).toString("base64")}`;
const secretB = `whsec_${randomBytes(24).toString("base64")}`;

interface Received {
  headers: IncomingHttpHeaders;
  body: Buffer;
}
type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

let server: Server;
let url: string;
let handler: Handler;
const received: Received[] = [];
let connections = 0;

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      received.push({ headers: req.headers, body });
      handler(req, res, body);
    });
  });
  server.on("connection", () => connections++);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/orange`;
});
afterEach(() => {
  received.length = 0;
  connections = 0;
  server.closeAllConnections();
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

function answer(status: number, body?: unknown, headers: Record<string, string> = {}): Handler {
  return (_req, res) => {
    const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", ...headers }).end(text);
  };
}

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  await Promise.all(opened.map((p) => p.close()));
});

function provisioner(overrides: Partial<WebhookProvisionerOptions> = {}) {
  const p = createWebhookProvisioner({ url, secrets: [secretA, secretB], timeoutMs: 2_000, ...overrides });
  opened.push(p);
  return p;
}

let seq = 0;
function call(body: unknown = { type: "licences.provision", data: { licences: [{ id: "us_1" }] } }): ProvisioningCall {
  seq++;
  return { id: `cmd_${seq}_${randomBytes(4).toString("hex")}`, type: "licences.provision", body: JSON.stringify(body) };
}

describe("webhook provisioner: the request", () => {
  it("POSTs the call's body byte for byte, with the call's id and a signature each secret verifies", async () => {
    handler = answer(204);
    // Non-ASCII text and odd spacing: the bytes must be the call's, not a re-serialisation.
    const c: ProvisioningCall = {
      id: "cmd_0f3a",
      type: "customer.upserted",
      body: '{"type":"customer.upserted",  "data":{"customer":{"tradingName":"Boulangerie Müller — Saint-Étienne"}}}\n',
    };

    const result = await provisioner().send(c);

    expect(result).toMatchObject({ outcome: "done", status: 204, licences: [] });
    expect(received).toHaveLength(1);
    const [got] = received;
    expect(got!.body.equals(Buffer.from(c.body, "utf8"))).toBe(true);
    expect(got!.headers["content-type"]).toBe("application/json");
    expect(got!.headers["webhook-id"]).toBe("cmd_0f3a");
    const signatures = String(got!.headers["webhook-signature"]).split(" ");
    expect(signatures).toHaveLength(2);
    for (const s of signatures) expect(s).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
    const headers = {
      "webhook-id": String(got!.headers["webhook-id"]),
      "webhook-timestamp": String(got!.headers["webhook-timestamp"]),
      "webhook-signature": String(got!.headers["webhook-signature"]),
    };
    // Each secret alone verifies (the application may hold the old one or the new one)…
    for (const secret of [secretA, secretB]) {
      expect(new Webhook(secret).verify(got!.body.toString("utf8"), headers)).toEqual(JSON.parse(c.body));
    }
    // …another one does not, nor does the same signature over other bytes.
    expect(() => new Webhook(`whsec_${randomBytes(32).toString("base64")}`).verify(c.body, headers)).toThrow(/No matching signature/);
    expect(() => new Webhook(secretA).verify(c.body.replace("Müller", "Muller"), headers)).toThrow(/No matching signature/);
  });

  it("signs with one secret as well, with the timestamp taken at send time in whole seconds", async () => {
    handler = answer(200, "");
    let now = 1_780_000_000_900;
    const p = provisioner({ secrets: [secretB], clock: { now: () => new Date(now) } });

    await p.send(call());
    now += 61_000;
    await p.send(call());

    expect(received.map((r) => r.headers["webhook-timestamp"])).toEqual(["1780000000", "1780000061"]);
    expect(String(received[0]!.headers["webhook-signature"]).split(" ")).toHaveLength(1);
    // The signed content carries the same timestamp as the header (verified with a clock-free HMAC).
    const expected = new Webhook(secretB).sign(
      String(received[0]!.headers["webhook-id"]),
      new Date(1_780_000_000_000),
      received[0]!.body.toString("utf8"),
    );
    expect(received[0]!.headers["webhook-signature"]).toBe(expected);
  });

  it("keeps connections alive across calls", async () => {
    handler = answer(200, { licences: [] });
    const p = provisioner();
    for (let i = 0; i < 6; i++) expect((await p.send(call())).outcome).toBe("done");
    expect(received).toHaveLength(6);
    // undici may open a second socket while the first one finishes reading an answer; never one per call.
    expect(connections).toBeLessThanOrEqual(2);
  });
});

describe("webhook provisioner: classifying the answer", () => {
  it("2xx with licences: done, with what the application told about each licence", async () => {
    const licences = [
      {
        id: "us_1",
        realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://app.example/t/us_1" }], extra: { kept: true } },
        login: { key: "login", value: "paul@boulangerie-martin.example" },
        serviceCharacteristic: [{ name: "plan", value: "pro" }],
      },
      { id: "us_2", login: null, realizingResource: null },
    ];
    handler = answer(201, { licences, somethingElse: 1 });

    const result = await provisioner().send(call());

    expect(result).toMatchObject({
      outcome: "done",
      status: 201,
      licences: [
        {
          id: "us_1",
          realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://app.example/t/us_1" }], extra: { kept: true } },
          login: { key: "login", value: "paul@boulangerie-martin.example" },
          serviceCharacteristic: [{ name: "plan", value: "pro" }],
        },
        { id: "us_2" },
      ],
    });
    // null reads as absent: nothing null is stored on a licence.
    expect(result.outcome === "done" && result.licences[1]).toEqual({ id: "us_2" });
    expect(result.responseBody).toBe(JSON.stringify({ licences, somethingElse: 1 }));
    expect(result.durationMs).toBeGreaterThanOrEqual(0);
  });

  it.each([
    [200, "", "empty"],
    [200, "  \n", "blank"],
    [200, {}, "no licences"],
    [204, undefined, "no content"],
  ])("%i with a body that is %j (%s): done with no licences", async (status, body, _what) => {
    handler = answer(status, body);
    expect(await provisioner().send(call())).toMatchObject({ outcome: "done", status, licences: [] });
  });

  it("202: accepted, the result comes later", async () => {
    handler = answer(202, { status: "accepted" });
    const result = await provisioner().send(call());
    expect(result).toMatchObject({ outcome: "accepted", status: 202, responseBody: '{"status":"accepted"}' });
    expect(result).not.toHaveProperty("licences");
  });

  it("409 and 422: refused with the application's reason, bounded, or a default naming the status", async () => {
    handler = answer(409, { reason: "  no seat left on plan pro  " });
    expect(await provisioner().send(call())).toMatchObject({ outcome: "refused", status: 409, reason: "no seat left on plan pro" });

    handler = answer(422, { reason: "x".repeat(5000) });
    const long = await provisioner().send(call());
    expect(long.outcome === "refused" && long.reason.length).toBe(1000);

    for (const body of [undefined, "not json", { reason: 42 }, { reason: "" }, [1]]) {
      handler = answer(422, body);
      expect(await provisioner().send(call())).toMatchObject({
        outcome: "refused",
        status: 422,
        reason: "the partner's application refused the command (HTTP 422) without giving a reason",
      });
    }
  });

  it.each([408, 429, 500, 502, 503, 504])("%i: retry", async (status) => {
    handler = answer(status, { error: "busy" });
    const result = await provisioner().send(call());
    expect(result).toMatchObject({ outcome: "retry", status, error: `HTTP ${status}`, responseBody: '{"error":"busy"}' });
    expect(result).not.toHaveProperty("retryAfterMs");
  });

  it.each([
    [400, "HTTP 400"],
    [401, "HTTP 401: the application did not accept the signature (do both sides hold the same webhook secret?)"],
    [403, "HTTP 403: the application did not accept the signature (do both sides hold the same webhook secret?)"],
    [404, "HTTP 404: is the application's webhook URL right?"],
    [410, "HTTP 410"],
    [302, "HTTP 302: redirects are not followed, configure the application's final URL"],
  ])("%i: rejected (%s)", async (status, error) => {
    handler = answer(status, { error: "nope" }, status === 302 ? { location: "http://127.0.0.1:1/elsewhere" } : {});
    expect(await provisioner().send(call())).toEqual({
      outcome: "rejected",
      status,
      error,
      responseBody: '{"error":"nope"}',
      durationMs: expect.any(Number),
    });
    expect(received).toHaveLength(1);
  });

  it.each([
    ["not JSON", "<html>ok</html>", "the answer's body is not JSON"],
    ["an array", [{ id: "us_1" }], "the answer's body breaks the contract: the body must be a JSON object"],
    ["licences not an array", { licences: { id: "us_1" } }, "the answer's body breaks the contract: licences must be an array"],
    ["a licence without id", { licences: [{ id: "us_1" }, { login: { key: "login", value: "x" } }] }, "licences[1].id is required"],
    ["an empty id", { licences: [{ id: "" }] }, "licences[0].id must not be empty"],
    ["an unknown login key", { licences: [{ id: "us_1", login: { key: "email", value: "a@b" } }] }, 'licences[0].login.key must be one of "login", "organizationCode"'],
    ["a resource without type", { licences: [{ id: "us_1", realizingResource: { characteristic: [] } }] }, "licences[0].realizingResource.type is required"],
    ["a characteristic value not a string", { licences: [{ id: "us_1", serviceCharacteristic: [{ name: "seats", value: 3 }] }] }, "licences[0].serviceCharacteristic[0].value must be a string"],
    ["an empty serviceCharacteristic", { licences: [{ id: "us_1", serviceCharacteristic: [] }] }, "licences[0].serviceCharacteristic must have at least 1 item"],
    ["a NUL character", { licences: [{ id: "us_1", realizingResource: { type: "url", note: { text: "a\u0000b" } } }] }, "licences[0].realizingResource.note.text must not contain a NUL character or a lone UTF-16 surrogate"],
    ["a lone surrogate", '{"licences":[{"id":"us_1","login":{"key":"login","value":"\\ud800x"}}]}', "licences[0].login.value must not contain a NUL character"],
    ["a repeated id", { licences: [{ id: "us_1" }, { id: "us_1" }] }, "licences[1].id must be unique (licences[0] has the same id)"],
  ])("a 2xx body with %s: rejected, naming the field and the rule", async (_what, body, error) => {
    handler = answer(200, body);
    const result = await provisioner().send(call());
    expect(result.outcome).toBe("rejected");
    expect(result).toMatchObject({ status: 200 });
    expect("error" in result && result.error).toContain(error);
  });

  it("readAppLicences reads the same licences from another body (the result route's)", () => {
    expect(readAppLicences({ outcome: "completed", licences: [{ id: "us_1", login: { key: "organizationCode", value: "123" } }] })).toEqual({
      licences: [{ id: "us_1", login: { key: "organizationCode", value: "123" } }],
    });
    expect(readAppLicences({ outcome: "completed", licences: [{ id: 7 }] })).toEqual({ error: "licences[0].id must be a string (got 7)" });
  });

  it("the reason and the body kept for operators hold no NUL nor a surrogate split by the cut", async () => {
    handler = answer(409, `{"reason":"no\\u0000seat \\ud83d"}`);
    expect(await provisioner().send(call())).toMatchObject({ outcome: "refused", reason: "no\uFFFDseat \uFFFD" });

    handler = answer(503, "ab\u0000😀");
    const cut = await provisioner({ maxResponseBodyChars: 4 }).send(call());
    expect(cut.responseBody).toBe("ab\uFFFD\uFFFD");
  });

  it("a 2xx body larger than the limit: rejected; responseBody is cut for operators", async () => {
    const big = { licences: Array.from({ length: 200 }, (_, i) => ({ id: `us_${i}`, login: { key: "login", value: "x".repeat(50) } })) };
    handler = answer(200, big);
    const cut = await provisioner({ maxAnswerBytes: 2_000, maxResponseBodyChars: 100 }).send(call());
    expect(cut).toMatchObject({ outcome: "rejected", status: 200, error: "the answer's body is larger than 2000 bytes" });
    expect(cut.responseBody).toBe(JSON.stringify(big).slice(0, 100));

    const whole = await provisioner({ maxResponseBodyChars: 100 }).send(call());
    expect(whole.outcome === "done" && whole.licences).toHaveLength(200);
    expect(whole.responseBody).toHaveLength(100);
  });
});

describe("webhook provisioner: Retry-After", () => {
  const NOW = Date.parse("2026-05-02T09:15:00.000Z");
  const clock = { now: () => new Date(NOW) };

  it("in seconds, as an HTTP date, capped; ignored when unreadable", async () => {
    const p = provisioner({ clock, maxRetryAfterMs: 600_000 });

    handler = answer(503, "", { "retry-after": "7" });
    expect(await p.send(call())).toMatchObject({ outcome: "retry", status: 503, retryAfterMs: 7_000 });

    handler = answer(429, "", { "retry-after": new Date(NOW + 90_000).toUTCString() });
    expect(await p.send(call())).toMatchObject({ outcome: "retry", status: 429, retryAfterMs: 90_000 });

    handler = answer(503, "", { "retry-after": "86400" });
    expect(await p.send(call())).toMatchObject({ outcome: "retry", retryAfterMs: 600_000 });

    handler = answer(503, "", { "retry-after": "soon" });
    expect(await p.send(call())).not.toHaveProperty("retryAfterMs");
  });
});

describe("webhook provisioner: no answer", () => {
  it("a server that never answers: retry once the deadline passes", async () => {
    handler = () => {};
    const result = await provisioner({ timeoutMs: 300 }).send(call());
    expect(result).toMatchObject({ outcome: "retry", error: expect.stringContaining("no answer within 300 ms") });
    expect(result).not.toHaveProperty("status");
    expect(result.durationMs).toBeGreaterThanOrEqual(250);
    expect(received).toHaveLength(1);
  });

  it("the deadline covers the whole body, not only the gap between two chunks", async () => {
    let timer: NodeJS.Timeout | undefined;
    handler = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"licences":[');
      // A byte every 50 ms: each gap is well within the timeout, the whole exchange is not.
      timer = setInterval(() => res.write(" "), 50);
    };
    const result = await provisioner({ timeoutMs: 400 }).send(call());
    clearInterval(timer);
    expect(result).toMatchObject({ outcome: "retry", error: expect.stringContaining("no answer within 400 ms") });
  });

  it("connection refused: retry", async () => {
    const port = await freePort();
    const result = await provisioner({ url: `http://127.0.0.1:${port}/hooks` }).send(call());
    expect(result).toMatchObject({ outcome: "retry", error: "connection refused (ECONNREFUSED)" });
  });

  it("the caller's abort (the worker stopping): retry, never a throw", async () => {
    handler = () => {};
    const stop = new AbortController();
    const pending = provisioner().send(call(), stop.signal);
    setTimeout(() => stop.abort(), 50);
    expect(await pending).toMatchObject({ outcome: "retry", error: "aborted by the caller" });
  });
});

describe("webhook provisioner: secrets", () => {
  it("no secret, signature or Authorization-like value reaches the logs, the errors or the answers", async () => {
    const lines: string[] = [];
    const logger = pino(
      { level: "trace" },
      new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(chunk.toString("utf8"));
          done();
        },
      }),
    );
    const p = provisioner({ logger, timeoutMs: 300 });
    const answers: unknown[] = [];
    for (const h of [answer(200, { licences: [{ id: "us_1" }] }), answer(409, { reason: "nope" }), answer(401), answer(200, "{"), answer(503), () => {}]) {
      handler = h;
      answers.push(await p.send(call()));
    }
    const signatures = received.map((r) => String(r.headers["webhook-signature"]));
    const logs = lines.join("");
    expect(lines.length).toBe(6);
    expect(logs).toContain('"outcome":"done"');
    expect(logs).toContain('"outcome":"retry"');
    expect(logs).toContain(String(received[0]!.headers["webhook-id"]));
    const everything = logs + JSON.stringify(answers);
    for (const secret of [secretA, secretB]) {
      expect(everything).not.toContain(secret);
      expect(everything).not.toContain(secret.slice("whsec_".length));
    }
    for (const s of signatures.flatMap((v) => v.split(" ")).map((v) => v.slice(3))) expect(everything).not.toContain(s);
  });

  it("parseWebhookSecrets: a space-separated list of whsec_ secrets of 24 to 64 bytes", () => {
    expect(parseWebhookSecrets(`  ${secretA}   ${secretB} `)).toEqual([secretA, secretB]);
    expect(parseWebhookSecrets(`whsec_${randomBytes(64).toString("base64")}`)).toHaveLength(1);
  });

  it.each([
    ["", "X_SECRETS is empty"],
    ["   ", "X_SECRETS is empty"],
    [`${randomBytes(32).toString("base64")}`, 'X_SECRETS must start with "whsec_"'],
    [`${secretA} sk_${randomBytes(32).toString("base64")}`, 'X_SECRETS, secret 2 of 2, must start with "whsec_"'],
    [`whsec_${randomBytes(32).toString("base64url")}!`, "must be \"whsec_\" followed by standard, padded base64"],
    [`whsec_${randomBytes(32).toString("base64").replace(/=+$/, "")}`, "must be \"whsec_\" followed by standard, padded base64"],
    [`whsec_${randomBytes(16).toString("base64")}`, "must decode to 24 to 64 bytes (got 16)"],
    [`whsec_${randomBytes(65).toString("base64")}`, "must decode to 24 to 64 bytes (got 65)"],
  ])("parseWebhookSecrets(%j) throws: %s", (value, message) => {
    let error: Error | undefined;
    try {
      parseWebhookSecrets(value, "X_SECRETS");
    } catch (err) {
      error = err as Error;
    }
    expect(error?.message).toContain(message);
    expect(error?.message).toContain("set X_SECRETS to one or more space-separated secrets");
    // The message names the variable and the rule, never the value.
    for (const part of value.split(/\s+/).filter((s) => s.length > 8)) expect(error?.message).not.toContain(part);
  });

  it("refuses a URL that is not http(s) and an empty secret list at construction", () => {
    expect(() => createWebhookProvisioner({ url: "ftp://127.0.0.1/x", secrets: [secretA], timeoutMs: 1000 })).toThrow(/must be http or https/);
    expect(() => createWebhookProvisioner({ url: "not a url", secrets: [secretA], timeoutMs: 1000 })).toThrow(/not a valid URL/);
    expect(() => createWebhookProvisioner({ url, secrets: [], timeoutMs: 1000 })).toThrow(/at least one secret/);
  });
});
