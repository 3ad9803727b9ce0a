import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Clock } from "../src/lib/clock.js";
import { createOutboundAgent, parseRetryAfter } from "../src/events/http.js";
import {
  createOrangeEventClient,
  type OrangeEvent,
  type OrangeEventClientOptions,
} from "../src/events/orange-client.js";
import { createTokenCache, type TokenCache, type TokenCacheOptions } from "../src/events/token-cache.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";

const NOW = Date.parse("2026-05-02T09:15:00.000Z");
const clock: Clock = { now: () => new Date(NOW) };

let gw: MockGateway;
const agent = createOutboundAgent({ timeoutMs: 2_000 });
let tokens: TokenCache;

beforeAll(async () => {
  gw = await startMockGateway({ clientId: "acme-partner", clientSecret: "s3cr3t-Value-42" });
});
afterEach(() => {
  gw.reset();
});
afterAll(async () => {
  await agent.close();
  await gw.close();
});

function client(overrides: Partial<OrangeEventClientOptions> = {}, tokenOverrides: Partial<TokenCacheOptions> = {}) {
  tokens = createTokenCache({
    tokenUrl: gw.tokenUrl,
    clientId: gw.clientId,
    clientSecret: gw.clientSecret,
    dispatcher: agent,
    timeoutMs: 1_000,
    retry: { attempts: 2, baseMs: 1, maxMs: 1 },
    ...tokenOverrides,
  });
  return createOrangeEventClient({
    baseUrl: gw.url,
    offer: "mba2-beta",
    tokens,
    timeoutMs: 1_000,
    dispatcher: agent,
    clock,
    ...overrides,
  });
}

let seq = 0;
function orderEvent(): OrangeEvent {
  seq++;
  return {
    id: `evt-${seq}`,
    type: "completedStateNotification",
    time: "2026-05-02T09:15:02.345Z",
    resource: { id: `ord-${seq}`, state: "completed", orderItem: [{ id: "1", productRef: { id: "fleet-1" } }] },
  };
}

function issuedTokens(): string[] {
  return gw.tokenLog.flatMap((t) => (t.token ? [t.token] : []));
}

describe("Orange event client", () => {
  it("POSTs a product-ordering event with the bearer token, Accept and Content-Type, and reports it delivered", async () => {
    const events = client();
    const event = orderEvent();

    const result = await events.send("productordering", event);

    expect(result).toEqual({ outcome: "delivered", status: 201, requestId: gw.received[0]?.requestId });
    const [got] = gw.received;
    expect(got?.path).toBe("/mba2-beta/productordering/v2/event");
    expect(got?.api).toBe("productordering");
    expect(got?.body).toEqual(event);
    expect(got?.token).toBe(issuedTokens()[0]);
    expect(got?.headers.authorization).toBe(`Bearer ${issuedTokens()[0]}`);
    expect(got?.headers.accept).toBe("application/json");
    expect(got?.headers["content-type"]).toBe("application/json");
  });

  it("POSTs a user-service event to the configured offer and paths", async () => {
    const events = client({ offer: "mba2", userServicePath: "/userService/v2/event" });
    expect(events.urlFor("userservice")).toBe(`${gw.url}/mba2/userService/v2/event`);
    expect(client({ offer: "mba2" }).urlFor("userservice")).toBe(`${gw.url}/mba2/userservice/v2/event`);

    const event = { id: "evt-us", type: "updateNotification", time: "2026-05-02T09:15:02.345Z", resource: { userService: [] } };
    const result = await client({ offer: "mba2" }).send("userservice", event);

    expect(result.outcome).toBe("delivered");
    expect(gw.received[0]?.path).toBe("/mba2/userservice/v2/event");
    expect(gw.received[0]?.body).toEqual(event);
  });

  it("makes one token request for 200 concurrent sends", async () => {
    const events = client();
    const sent = Array.from({ length: 200 }, () => orderEvent());

    const results = await Promise.all(sent.map((e, i) => events.send(i % 2 ? "userservice" : "productordering", e)));

    expect(results.every((r) => r.outcome === "delivered")).toBe(true);
    expect(gw.tokenRequests).toBe(1);
    expect(gw.delivered()).toHaveLength(200);
    expect(new Set(gw.received.map((r) => r.token))).toEqual(new Set(issuedTokens()));
    expect(gw.received.every((r) => r.headers.accept === "application/json")).toBe(true);
    expect(new Set(gw.delivered().map((r) => (r.body as OrangeEvent).id))).toEqual(new Set(sent.map((e) => e.id)));
  });

  it("on a 401 drops the token, gets one new token and delivers the event", async () => {
    const events = client();
    await events.send("productordering", orderEvent());
    gw.scriptEvents(401);

    const result = await events.send("productordering", orderEvent());

    expect(result).toMatchObject({ outcome: "delivered", status: 201 });
    expect(gw.tokenRequests).toBe(2);
    const [, rejected, accepted] = gw.received;
    expect(rejected?.status).toBe(401);
    expect(rejected?.token).toBe(issuedTokens()[0]);
    expect(accepted?.status).toBe(201);
    expect(accepted?.token).toBe(issuedTokens()[1]);
    expect(accepted?.body).toEqual(rejected?.body);
  });

  it("refreshes the token once when many deliveries hit 401 with the same revoked token", async () => {
    const events = client();
    await events.send("productordering", orderEvent());
    gw.revokeTokens();

    const results = await Promise.all(Array.from({ length: 20 }, () => events.send("userservice", orderEvent())));

    expect(results.every((r) => r.outcome === "delivered")).toBe(true);
    expect(gw.tokenRequests).toBe(2);
    expect(gw.delivered()).toHaveLength(21);
    expect(gw.received.filter((r) => r.status === 401)).toHaveLength(20);
  });

  it("asks for a retry, not a park, when Orange answers 401 again with a fresh token", async () => {
    const events = client();
    gw.scriptEvents(401, 2);

    const result = await events.send("productordering", orderEvent());

    expect(result).toMatchObject({ outcome: "retry", status: 401, requestId: gw.received[1]?.requestId });
    expect(result.error).toMatch(/^HTTP 401 with a freshly obtained access token: Orange refuses our tokens/);
    expect(gw.received.map((r) => r.token)).toEqual(issuedTokens());
    expect(gw.tokenRequests).toBe(2);
  });

  it("while Orange refuses fresh tokens, asks for one new token per incident round, however many deliveries fail", async () => {
    let now = NOW;
    const tokenClock: Clock = { now: () => new Date(now) };
    const events = client({}, { clock: tokenClock, incidentBackoff: { baseMs: 1_000, maxMs: 1_500 } });
    const send = () => events.send("userservice", orderEvent());
    const refused = (from: number) => gw.received.slice(from).every((r) => r.status === 401);
    // 2 (first send) + 10 (held round) + 10 (second round) + 1 (held again)
    gw.scriptEvents(401, 23);

    expect(await send()).toMatchObject({ outcome: "retry", status: 401 });
    expect(gw.tokenRequests).toBe(2);
    const [, fresh] = issuedTokens();

    // Round 1: the fresh token is held; each delivery makes one call, no token request.
    const held = await Promise.all(Array.from({ length: 10 }, send));
    expect(held.every((r) => r.outcome === "retry" && r.status === 401)).toBe(true);
    expect(held[0]?.error).toMatch(/^HTTP 401: Orange still refuses our access tokens/);
    expect(gw.received.slice(2).map((r) => r.token)).toEqual(Array(10).fill(fresh));
    expect(gw.tokenRequests).toBe(2);

    // The hold has passed: one token for the five deliveries of the round (single flight), refused too.
    now += 1_000;
    const second = await Promise.all(Array.from({ length: 5 }, send));
    expect(second.every((r) => r.outcome === "retry")).toBe(true);
    expect(gw.tokenRequests).toBe(3);
    expect(gw.received).toHaveLength(22);
    expect(refused(0)).toBe(true);

    // Round 2 holds longer (doubled, capped at 1.5 s): 1 s later, still no new token.
    now += 1_000;
    expect(await send()).toMatchObject({ outcome: "retry", status: 401 });
    expect(gw.tokenRequests).toBe(3);

    // Orange recovers and accepts the token held: the incident is over without another request...
    now += 1_000;
    expect(await send()).toMatchObject({ outcome: "delivered", status: 201 });
    expect(gw.received.at(-1)?.token).toBe(issuedTokens()[2]);
    expect(gw.tokenRequests).toBe(3);
    // ...and a later 401 is a revoked token again: refreshed at once.
    gw.scriptEvents(401);
    expect(await send()).toMatchObject({ outcome: "delivered", status: 201 });
    expect(gw.tokenRequests).toBe(4);
  });

  it.each([500, 502, 503, 408])("asks for a retry on HTTP %i", async (status) => {
    const events = client();
    gw.scriptEvents(status);

    const result = await events.send("productordering", orderEvent());

    expect(result).toMatchObject({ outcome: "retry", status, requestId: gw.received[0]?.requestId, error: `HTTP ${status}` });
    expect(gw.received).toHaveLength(1);
  });

  it("asks for a retry on 429 with the delay of Retry-After in seconds", async () => {
    const events = client();
    gw.scriptEvents({ status: 429, headers: { "retry-after": "30" } });

    const result = await events.send("productordering", orderEvent());

    expect(result).toMatchObject({ outcome: "retry", status: 429, retryAfterMs: 30_000 });
  });

  it("reads Retry-After given as an HTTP date against the injected clock", async () => {
    const events = client();
    gw.scriptEvents({ status: 503, headers: { "retry-after": new Date(NOW + 90_000).toUTCString() } });

    const result = await events.send("productordering", orderEvent());

    expect(result).toMatchObject({ outcome: "retry", status: 503, retryAfterMs: 90_000 });
  });

  it("uses the mock's default 429 answer (Retry-After: 1)", async () => {
    const events = client();
    gw.scriptEvents(429);

    expect(await events.send("userservice", orderEvent())).toMatchObject({ outcome: "retry", status: 429, retryAfterMs: 1000 });
  });

  it("asks for a retry when Orange never answers within the timeout", async () => {
    const events = client({ timeoutMs: 150 });
    await events.send("productordering", orderEvent()); // token obtained beforehand
    gw.scriptEvents("hang");

    const result = await events.send("productordering", orderEvent());

    expect(result.outcome).toBe("retry");
    expect(result.status).toBeUndefined();
    expect(result.error).toMatch(/no answer within 150 ms/);
    expect(gw.received[1]?.status).toBe("hang");
  });

  it("asks for a retry when the connection is refused", async () => {
    const closed = await startMockGateway();
    const baseUrl = closed.url;
    await closed.close();
    const events = client({ baseUrl });

    const result = await events.send("productordering", orderEvent());

    expect(result.outcome).toBe("retry");
    expect(result.error).toMatch(/connection refused/);
  });

  it("asks for a retry, without throwing, when no token can be obtained", async () => {
    const events = client();
    gw.scriptToken(503, 2);

    const result = await events.send("productordering", orderEvent());

    expect(result.outcome).toBe("retry");
    expect(result.error).toMatch(/no access token: .*HTTP 503/);
    expect(result.error).not.toContain(gw.clientSecret);
    expect(gw.received).toHaveLength(0);
  });

  it("parks the event on 400 with the status, X-OAPI-Request-Id and Orange's body", async () => {
    const events = client();
    gw.scriptEvents(400);

    const result = await events.send("productordering", orderEvent());

    expect(result.outcome).toBe("park");
    expect(result.status).toBe(400);
    expect(result.requestId).toBe(gw.received[0]?.requestId);
    expect(result.requestId).toMatch(/^mock-\d+$/);
    expect(JSON.parse(result.body ?? "")).toEqual({
      code: 24,
      message: "Invalid body field",
      description: "resource.state: unexpected value",
    });
    expect(result.error).toBe("HTTP 400");
    expect(gw.received).toHaveLength(1);
  });

  it.each([403, 404, 406, 409, 415, 422])("parks the event on HTTP %i", async (status) => {
    const events = client();
    gw.scriptEvents(status);

    expect(await events.send("productordering", orderEvent())).toMatchObject({ outcome: "park", status });
  });

  it("cuts a long answer body", async () => {
    const events = client({ maxBodyChars: 100 });
    gw.scriptEvents({ status: 400, body: "x".repeat(100_000) });

    const result = await events.send("productordering", orderEvent());

    expect(result).toMatchObject({ outcome: "park", status: 400 });
    expect(result.body).toBe("x".repeat(100));
  });

  it("accepts a pino logger and logs without the token", async () => {
    const lines: string[] = [];
    const logger = pino({ level: "debug" }, { write: (line: string) => lines.push(line) });
    const events = client({ logger });

    await events.send("productordering", orderEvent());
    gw.scriptEvents(500);
    await events.send("productordering", orderEvent());

    const log = lines.join("");
    expect(log).toContain("Orange event delivered");
    expect(log).toContain('"requestId":"mock-');
    expect(log).toContain("Orange event not delivered");
    expect(log).not.toContain(issuedTokens()[0]);
  });
});

describe("Retry-After", () => {
  it("reads delay-seconds and HTTP dates, and ignores anything else", () => {
    expect(parseRetryAfter("0", NOW)).toBe(0);
    expect(parseRetryAfter(" 120 ", NOW)).toBe(120_000);
    expect(parseRetryAfter(new Date(NOW + 5_000).toUTCString(), NOW)).toBe(5_000);
    expect(parseRetryAfter(new Date(NOW - 5_000).toUTCString(), NOW)).toBe(0);
    expect(parseRetryAfter(["7", "9"], NOW)).toBe(7_000);
    for (const junk of [undefined, "", "1.5", "-3", "soon"]) expect(parseRetryAfter(junk, NOW)).toBeUndefined();
  });
});
