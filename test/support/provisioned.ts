/**
 * The server in PROVISIONING_MODE=webhook (in process, listening for the application's late
 * results) with the reference partner application behind a loopback front door the test can
 * take over: by default the front forwards each command to the application untouched; a test
 * sets `front.answer` to answer a command itself (a status the reference application never
 * gives, such as 422). Everything that reached the front is kept, raw.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { startPartnerApp, WEBHOOK_PATH, type Behaviour, type PartnerApp } from "../../examples/partner-app/app.js";
import { freePort } from "../../src/simulator/self-host.js";
import { createTestApp, type TestApp } from "./app.js";

export const ADMIN_TOKEN = "admin-token-provisioned-7c1d";
export const APP_TOKEN = "app-token-provisioned-2b9e";

export const newSecret = () => `whsec_${randomBytes(32).toString("base64")}`;

export interface FrontCall {
  headers: IncomingHttpHeaders;
  body: string;
  /** What the server got back. */
  status: number;
}

export interface Front {
  calls: FrontCall[];
  /** Set to answer commands here instead of the application (undefined: forward). */
  answer?: (body: string) => { status: number; body: unknown } | undefined;
}

export interface Provisioned {
  t: TestApp;
  partner: PartnerApp;
  front: Front;
  /** The secret the server signs with (and the application verifies with). */
  secret: string;
  close(): Promise<void>;
}

export async function startProvisioned(env: Record<string, string> = {}, behaviour?: Behaviour): Promise<Provisioned> {
  const secret = newSecret();
  const partnerPort = await freePort();
  const front: Front = { calls: [] };
  const frontServer: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const call: FrontCall = { headers: req.headers, body, status: 0 };
      front.calls.push(call);
      const own = front.answer?.(body);
      if (own !== undefined) {
        call.status = own.status;
        res.writeHead(own.status, { "content-type": "application/json" }).end(JSON.stringify(own.body));
        return;
      }
      const headers: Record<string, string> = {};
      for (const name of ["content-type", "webhook-id", "webhook-timestamp", "webhook-signature"]) {
        const v = req.headers[name];
        if (typeof v === "string") headers[name] = v;
      }
      fetch(`http://127.0.0.1:${partnerPort}${WEBHOOK_PATH}`, { method: "POST", headers, body })
        .then(async (r) => {
          const text = await r.text();
          call.status = r.status;
          res.writeHead(r.status, { "content-type": "application/json" }).end(text);
        })
        .catch(() => {
          call.status = 502;
          res.writeHead(502).end();
        });
    });
  });
  await new Promise<void>((resolve) => frontServer.listen(0, "127.0.0.1", resolve));
  const frontPort = (frontServer.address() as AddressInfo).port;

  const t = await createTestApp({
    env: {
      ADMIN_TOKEN,
      APP_TOKEN,
      PROVISIONING_MODE: "webhook",
      PROVISIONING_URL: `http://127.0.0.1:${frontPort}${WEBHOOK_PATH}`,
      PROVISIONING_SECRET: secret,
      PROVISIONING_TIMEOUT_MS: "5000",
      PROVISIONING_RETRY_BASE_MS: "20",
      PROVISIONING_RETRY_MAX_MS: "100",
      PROVISIONING_MAX_ATTEMPTS: "4",
      PROVISIONING_SYNC_DEADLINE_MS: "8000",
      ...env,
    },
  });
  await t.app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = t.app.server.address() as AddressInfo;
  const partner = await startPartnerApp({
    secrets: [secret],
    port: partnerPort,
    host: "127.0.0.1",
    serverUrl: `http://127.0.0.1:${port}`,
    appToken: APP_TOKEN,
    behaviour,
    resultRetry: { baseMs: 50, maxMs: 200 },
  });
  return {
    t,
    partner,
    front,
    secret,
    async close() {
      await partner.close();
      frontServer.closeAllConnections();
      await new Promise((resolve) => frontServer.close(resolve));
      await t.close();
    },
  };
}
