/**
 * A delivery worker in a process of its own, for tests that kill it (SIGKILL) mid-delivery.
 * Environment: DATABASE_URL, GW_URL, GW_TOKEN_URL, GW_CLIENT_ID, GW_CLIENT_SECRET.
 * Prints "ready <workerId>" on stdout once it claims jobs.
 */
import { createOrangeEventClient } from "../../src/events/orange-client.js";
import { createTokenCache } from "../../src/events/token-cache.js";
import { startEventWorker } from "../../src/events/worker.js";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};

const tokens = createTokenCache({
  tokenUrl: env("GW_TOKEN_URL"),
  clientId: env("GW_CLIENT_ID"),
  clientSecret: env("GW_CLIENT_SECRET"),
});
const client = createOrangeEventClient({ baseUrl: env("GW_URL"), offer: "mba2", tokens, timeoutMs: 60_000 });
const worker = await startEventWorker({
  databaseUrl: env("DATABASE_URL"),
  client,
  retry: { baseMs: 10, maxMs: 50, maxAttempts: 5, maxAgeMs: 60_000 },
  concurrency: 2,
  leaseMs: 120_000,
  pollIntervalMs: 50,
  applicationName: "doomed-worker",
});
process.stdout.write(`ready ${worker.id ?? "?"}\n`);
