import { inspect } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Clock } from "../src/lib/clock.js";
import { createOutboundAgent } from "../src/events/http.js";
import { TokenRequestError, createTokenCache, type TokenCacheOptions } from "../src/events/token-cache.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";

/** A clock the test moves by hand. */
function manualClock(start = Date.parse("2026-05-02T09:00:00.000Z")) {
  let now = start;
  const clock: Clock & { advance(ms: number): void } = {
    now: () => new Date(now),
    advance: (ms) => {
      now += ms;
    },
  };
  return clock;
}

let gw: MockGateway;
const agent = createOutboundAgent({ timeoutMs: 2_000 });

beforeAll(async () => {
  gw = await startMockGateway({ clientId: "acme-partner", clientSecret: "s3cr3t-Value-42", expiresIn: 3600 });
});
afterEach(() => {
  gw.reset();
  gw.expiresIn = 3600;
});
afterAll(async () => {
  await agent.close();
  await gw.close();
});

function cache(overrides: Partial<TokenCacheOptions> = {}) {
  const waits: number[] = [];
  const tokens = createTokenCache({
    tokenUrl: gw.tokenUrl,
    clientId: gw.clientId,
    clientSecret: gw.clientSecret,
    dispatcher: agent,
    timeoutMs: 1_000,
    retry: { attempts: 3, baseMs: 20, maxMs: 200 },
    // Record backoff instead of waiting for it.
    sleep: async (ms) => {
      waits.push(ms);
    },
    ...overrides,
  });
  return { tokens, waits };
}

describe("token cache", () => {
  it("asks for a token exactly as the contract says: Basic auth, form body, Accept: application/json", async () => {
    const { tokens } = cache();
    const token = await tokens.getToken();

    expect(token).toBe(gw.tokenLog[0]?.token);
    const call = gw.tokenLog[0];
    expect(call?.headers.authorization).toBe(`Basic ${Buffer.from("acme-partner:s3cr3t-Value-42").toString("base64")}`);
    expect(call?.headers["content-type"]).toBe("application/x-www-form-urlencoded");
    expect(call?.headers.accept).toBe("application/json");
    expect(call?.body).toBe("grant_type=client_credentials");
  });

  it("makes one token request for 200 concurrent callers and reuses the token afterwards", async () => {
    const { tokens } = cache();
    const got = await Promise.all(Array.from({ length: 200 }, () => tokens.getToken()));
    for (let i = 0; i < 50; i++) got.push(await tokens.getToken());

    expect(new Set(got).size).toBe(1);
    expect(gw.tokenRequests).toBe(1);
    expect(tokens.stats()).toEqual({ requests: 1 });
  });

  it("refreshes ahead of expiry, keeps serving the valid token meanwhile, then uses the new one", async () => {
    const clock = manualClock();
    const { tokens } = cache({ clock, refreshAheadMs: 60_000 });
    const first = await tokens.getToken();

    clock.advance(3600_000 - 60_001); // just before the refresh window
    expect(await tokens.getToken()).toBe(first);
    expect(gw.tokenRequests).toBe(1);

    clock.advance(2); // inside the window: the old token still serves while one refresh runs
    const during = await Promise.all(Array.from({ length: 20 }, () => tokens.getToken()));
    expect(new Set(during)).toEqual(new Set([first]));
    await expect.poll(() => gw.tokenRequests).toBe(2);

    await expect.poll(() => tokens.getToken()).toBe(gw.tokenLog[1]?.token);
    expect(gw.tokenLog[1]?.token).not.toBe(first);
    expect(tokens.stats().requests).toBe(2);
  });

  it("keeps serving the valid token when a background refresh fails, and tries again after a pause", async () => {
    const clock = manualClock();
    const logged: string[] = [];
    const note = (_obj: object, msg?: string) => void logged.push(msg ?? "");
    const logger = { debug: note, info: note, warn: note };
    const { tokens } = cache({ clock, logger, refreshAheadMs: 60_000, retry: { attempts: 2, baseMs: 1, maxMs: 5_000 } });
    const first = await tokens.getToken();
    gw.scriptToken(500, 2);

    clock.advance(3600_000 - 30_000); // inside the refresh window
    expect(await tokens.getToken()).toBe(first);
    await expect.poll(() => logged).toContain("token refresh failed");
    expect(gw.tokenLog.map((t) => t.status)).toEqual([200, 500, 500]);

    for (let i = 0; i < 10; i++) expect(await tokens.getToken()).toBe(first);
    expect(gw.tokenRequests).toBe(3); // no new cycle during the pause

    clock.advance(5_000);
    expect(await tokens.getToken()).toBe(first);
    await expect.poll(() => gw.tokenRequests).toBe(4);
    await expect.poll(() => tokens.getToken()).toBe(gw.tokenLog[3]?.token);
    expect(gw.tokenRequests).toBe(4);
  });

  it("waits for a new token once the cached one has expired, with one request for all waiters", async () => {
    const clock = manualClock();
    const { tokens } = cache({ clock });
    const first = await tokens.getToken();

    clock.advance(3600_000);
    const got = await Promise.all(Array.from({ length: 20 }, () => tokens.getToken()));

    expect(new Set(got).size).toBe(1);
    expect(got[0]).not.toBe(first);
    expect(gw.tokenRequests).toBe(2);
  });

  it("does not refresh on every call when the token lives shorter than the refresh window", async () => {
    gw.expiresIn = 60; // refreshAheadMs is 60 s: clamped to half the lifetime
    const clock = manualClock();
    const { tokens } = cache({ clock, refreshAheadMs: 60_000 });
    await tokens.getToken();
    clock.advance(10_000);
    for (let i = 0; i < 20; i++) await tokens.getToken();

    expect(gw.tokenRequests).toBe(1);
  });

  it("retries a failing token endpoint with exponential backoff and jitter, then succeeds", async () => {
    gw.scriptToken(500, 2);
    const { tokens, waits } = cache({ retry: { attempts: 4, baseMs: 100, maxMs: 150 }, random: () => 0.5 });

    const token = await tokens.getToken();

    expect(token).toBe(gw.tokenLog[2]?.token);
    expect(gw.tokenRequests).toBe(3);
    // Equal jitter: between half and all of min(maxMs, baseMs·2^(n-1)).
    expect(waits).toEqual([75, 113]);
  });

  it("keeps every backoff within its bound whatever the jitter", async () => {
    gw.scriptToken(503, 3);
    const { tokens, waits } = cache({ retry: { attempts: 4, baseMs: 40, maxMs: 100 }, random: () => 0.999 });
    await tokens.getToken();

    expect(waits).toHaveLength(3);
    for (const [i, ms] of waits.entries()) {
      const ceiling = Math.min(100, 40 * 2 ** i);
      expect(ms).toBeGreaterThanOrEqual(ceiling / 2);
      expect(ms).toBeLessThanOrEqual(ceiling);
    }
  });

  it("honours Retry-After from the token endpoint, capped at maxMs", async () => {
    gw.scriptToken({ status: 429, headers: { "retry-after": "120" } });
    const { tokens, waits } = cache({ retry: { attempts: 2, baseMs: 10, maxMs: 500 } });
    await tokens.getToken();

    expect(waits).toEqual([500]);
  });

  it("does not poison the cache when a refresh fails: the next call tries again", async () => {
    gw.scriptToken(500, 3);
    const { tokens } = cache({ retry: { attempts: 3, baseMs: 1, maxMs: 1 } });

    const failure = await tokens.getToken().catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(TokenRequestError);
    expect((failure as TokenRequestError).message).toMatch(/HTTP 500.*after 3 attempts/);
    expect((failure as TokenRequestError).status).toBe(500);

    const token = await tokens.getToken();
    expect(token).toBe(gw.tokenLog[3]?.token);
    expect(gw.tokenRequests).toBe(4);
  });

  it("fails clearly on a wrong client secret, once, without the secret in the error", async () => {
    const secret = "wrong-Secret-xyz";
    const { tokens, waits } = cache({ clientSecret: secret });

    const failure = await tokens.getToken().catch((err: unknown) => err);

    expect(failure).toBeInstanceOf(TokenRequestError);
    const error = failure as TokenRequestError;
    expect(error.status).toBe(401);
    expect(error.retryable).toBe(false);
    expect(error.message).toContain("HTTP 401");
    expect(error.message).toContain("invalid_client");
    expect(error.message).toContain("client secret");
    const everything = `${error.message}\n${error.stack ?? ""}\n${inspect(error, { depth: 10 })}\n${JSON.stringify(error)}`;
    expect(everything).not.toContain(secret);
    expect(everything).not.toContain(Buffer.from(`${gw.clientId}:${secret}`).toString("base64"));
    expect(everything).not.toMatch(/Basic [A-Za-z0-9+/=]{8,}/);
    expect(gw.tokenRequests).toBe(1); // a credentials error is not retried
    expect(waits).toEqual([]);
  });

  it("scrubs the secret even when the token endpoint echoes it back", async () => {
    const basic = Buffer.from(`${gw.clientId}:${gw.clientSecret}`).toString("base64");
    gw.scriptToken({
      status: 400,
      body: { error: "invalid_request", error_description: `bad secret ${gw.clientSecret} in Basic ${basic}` },
    });
    const { tokens } = cache();

    const error = (await tokens.getToken().catch((err: unknown) => err)) as Error;

    expect(error.message).toContain("invalid_request");
    expect(inspect(error, { depth: 10 })).not.toContain(gw.clientSecret);
    expect(inspect(error, { depth: 10 })).not.toContain(basic);
  });

  it("rejects an answer that is not a valid token response", async () => {
    gw.scriptToken({ status: 200, body: { token_type: "Bearer", expires_in: 3600 } });
    const { tokens } = cache();

    await expect(tokens.getToken()).rejects.toThrow(/invalid token response.*access_token/);
  });

  it("accepts expires_in as a numeric string and a lower-case token type", async () => {
    gw.scriptToken({ status: 200, body: { token_type: "bearer", access_token: "abc", expires_in: "3600" } });
    const { tokens } = cache();

    expect(await tokens.getToken()).toBe("abc");
  });

  it("times out a token request that never gets an answer, and retries it", async () => {
    gw.scriptToken("hang", 2);
    const { tokens } = cache({ timeoutMs: 100, retry: { attempts: 2, baseMs: 1, maxMs: 1 } });

    await expect(tokens.getToken()).rejects.toThrow(/no answer within 100 ms.*after 2 attempts/);
    expect(gw.tokenRequests).toBe(2);
    expect(await tokens.getToken()).toBe(gw.tokenLog[2]?.token);
  });

  it("reports a refused connection as a retryable error", async () => {
    const closed = await startMockGateway();
    const tokenUrl = closed.tokenUrl;
    await closed.close();
    const { tokens } = cache({ tokenUrl, retry: { attempts: 2, baseMs: 1, maxMs: 1 } });

    const error = (await tokens.getToken().catch((err: unknown) => err)) as TokenRequestError;

    expect(error).toBeInstanceOf(TokenRequestError);
    expect(error.retryable).toBe(true);
    expect(error.message).toMatch(/connection refused.*after 2 attempts/);
  });

  it("drops a token on invalidate only while it is the cached one: two 401s cause one refresh", async () => {
    const { tokens } = cache();
    const first = await tokens.getToken();

    tokens.invalidate(first);
    tokens.invalidate(first);
    const [a, b] = await Promise.all([tokens.getToken(), tokens.getToken()]);
    expect(a).toBe(b);
    expect(a).not.toBe(first);

    tokens.invalidate(first); // a late 401 on the old token
    expect(await tokens.getToken()).toBe(a);
    expect(gw.tokenRequests).toBe(2);
  });

  it("spaces token requests out while Orange refuses fresh tokens: one per round, the hold doubling up to its cap", async () => {
    const clock = manualClock();
    const { tokens } = cache({ clock, incidentBackoff: { baseMs: 1_000, maxMs: 3_000 } });
    const first = await tokens.getToken();

    // A revoked token: dropped, the next token is requested at once.
    expect(tokens.invalidate(first)).toBe(true);
    const second = await tokens.getToken();
    expect(second).not.toBe(first);
    // Refused too, right after it was obtained: an incident at Orange; the token is kept for 1 s.
    expect(tokens.invalidate(second)).toBe(false);
    expect(tokens.invalidate(first)).toBe(true); // a late 401 on the old token: the caller just takes the current one
    expect(await tokens.getToken()).toBe(second);
    clock.advance(999);
    expect(tokens.invalidate(second)).toBe(false);
    expect(await tokens.getToken()).toBe(second);
    expect(gw.tokenRequests).toBe(2);

    // Round 2: one new token, shared by every caller, refused again: held 2 s, then round 3: 3 s (the cap).
    clock.advance(1);
    expect(tokens.invalidate(second)).toBe(true);
    const [third, same] = await Promise.all([tokens.getToken(), tokens.getToken()]);
    expect(same).toBe(third);
    expect(tokens.invalidate(third)).toBe(false);
    clock.advance(1_999);
    expect(tokens.invalidate(third)).toBe(false);
    clock.advance(1);
    expect(tokens.invalidate(third)).toBe(true);
    const fourth = await tokens.getToken();
    expect(tokens.invalidate(fourth)).toBe(false);
    clock.advance(2_999);
    expect(tokens.invalidate(fourth)).toBe(false);
    expect(gw.tokenRequests).toBe(4);

    // Orange accepts the held token: the incident is over, the next 401 is a plain revocation again.
    tokens.accepted(fourth);
    expect(tokens.invalidate(fourth)).toBe(true);
    const fifth = await tokens.getToken();
    expect(gw.tokenRequests).toBe(5);
    // A fresh token refused right after a revocation starts a new incident at round 1 (1 s).
    expect(tokens.invalidate(fifth)).toBe(false);
    clock.advance(1_000);
    expect(tokens.invalidate(fifth)).toBe(true);
  });

  it("lets one caller stop waiting without cancelling the request the others share", async () => {
    const { tokens } = cache();
    const controller = new AbortController();
    const impatient = tokens.getToken(controller.signal);
    const patient = tokens.getToken();
    controller.abort(new Error("shutting down"));

    await expect(impatient).rejects.toThrow("shutting down");
    expect(await patient).toBe(gw.tokenLog[0]?.token);
    expect(gw.tokenRequests).toBe(1);
  });

  it("works with an Agent of its own, and refuses to serve once closed", async () => {
    const tokens = createTokenCache({
      tokenUrl: gw.tokenUrl,
      clientId: gw.clientId,
      clientSecret: gw.clientSecret,
      timeoutMs: 1_000,
    });
    expect(await tokens.getToken()).toBe(gw.tokenLog[0]?.token);
    await tokens.close();
    await expect(tokens.getToken()).rejects.toThrow("token cache is closed");
  });
});
