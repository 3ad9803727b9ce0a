import { request } from "undici";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { createOrangeEventClient } from "../src/events/orange-client.js";
import { createTokenCache } from "../src/events/token-cache.js";
import { startMockGateway } from "../src/simulator/gateway.js";

describe("the tests' network guard", () => {
  it("refuses a connection to Orange's real gateway, whatever the client", async () => {
    await expect(request("https://ope.apibackbone.orange.com/oauth/v3/token")).rejects.toThrow(/test network guard/);
    await expect(fetch("http://192.0.2.1:8080/")).rejects.toThrow();
    const client = new pg.Client({ connectionString: "postgresql://u:p@db.example:5432/x" });
    await expect(client.connect()).rejects.toThrow(/test network guard/);
  });

  it("sends no event to the real gateway with the default settings: the delivery fails, nothing leaves", async () => {
    const tokens = createTokenCache({
      tokenUrl: "https://ope.apibackbone.orange.com/oauth/v3/token",
      clientId: "id",
      clientSecret: "secret",
      timeoutMs: 2_000,
      retry: { attempts: 1, baseMs: 1, maxMs: 1 },
    });
    const client = createOrangeEventClient({ baseUrl: "https://ope.apibackbone.orange.com", offer: "mba2", tokens, timeoutMs: 2_000 });
    try {
      const result = await client.send("productordering", { id: "ev_1", type: "completedStateNotification", json: "{}" });
      expect(result.outcome).toBe("retry");
      expect(result.error).toMatch(/test network guard/);
    } finally {
      await client.close();
      await tokens.close();
    }
  });

  it("lets loopback through", async () => {
    const gw = await startMockGateway();
    try {
      const res = await request(`${gw.url}/mba2/productordering/v2/event`, { method: "POST", body: "{}" });
      expect(res.statusCode).toBe(401); // reached the mock: no token
      await res.body.dump();
    } finally {
      await gw.close();
    }
  });
});
