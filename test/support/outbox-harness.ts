/**
 * Shared pieces of the outbox and delivery tests: enqueue in a real transaction, a real worker
 * against the loopback gateway, and a bounded wait for outcomes (no timing assertions).
 */
import { setTimeout as delay } from "node:timers/promises";
import type { Db } from "../../src/db/sql.js";
import type { PrismaReader } from "./prisma.js";
import type { Clock } from "../../src/lib/clock.js";
import { createIdGenerator } from "../../src/lib/ids.js";
import type { RetryPolicy } from "../../src/events/delivery.js";
import { createOrangeEventClient, type OrangeEventClient } from "../../src/events/orange-client.js";
import { enqueueEvent, type EnqueuedEvent, type NewEvent } from "../../src/events/outbox.js";
import { createTokenCache, type IncidentBackoff, type TokenCache, type TokenCacheOptions } from "../../src/events/token-cache.js";
import { startEventWorker, type EventWorker, type EventWorkerOptions } from "../../src/events/worker.js";
import type { MockGateway } from "../../src/simulator/gateway.js";

export const clock: Clock = { now: () => new Date() };
export const ids = createIdGenerator();

export const FAST_RETRY: RetryPolicy = { baseMs: 10, maxMs: 50, maxAttempts: 6, maxAgeMs: 60_000 };

export async function enqueue(db: Db, event: Partial<NewEvent> & { fleetId?: string; orderId?: string }): Promise<EnqueuedEvent> {
  return db.transaction((tx) =>
    enqueueEvent(
      tx,
      {
        api: "productordering",
        type: "completedStateNotification",
        resource: { id: event.orderId ?? "po_1", state: "completed" },
        ...event,
      },
      clock,
      ids,
    ),
  );
}

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== null && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(20);
  }
}

export interface WorkerHarness {
  worker: EventWorker;
  tokens: TokenCache;
  client: OrangeEventClient;
  stop(): Promise<void>;
}

export async function startWorker(
  gw: MockGateway,
  databaseUrl: string,
  overrides: Partial<EventWorkerOptions> & {
    eventTimeoutMs?: number;
    offer?: string;
    tokenIncidentBackoff?: IncidentBackoff;
    onTokenRequest?: TokenCacheOptions["onRequest"];
  } = {},
): Promise<WorkerHarness> {
  const { eventTimeoutMs, offer, tokenIncidentBackoff, onTokenRequest, ...workerOverrides } = overrides;
  const tokens = createTokenCache({
    tokenUrl: gw.tokenUrl,
    clientId: gw.clientId,
    clientSecret: gw.clientSecret,
    timeoutMs: 2_000,
    retry: { attempts: 2, baseMs: 5, maxMs: 20 },
    ...(tokenIncidentBackoff ? { incidentBackoff: tokenIncidentBackoff } : {}),
    ...(onTokenRequest ? { onRequest: onTokenRequest } : {}),
  });
  const client = createOrangeEventClient({
    baseUrl: gw.url,
    offer: offer ?? "mba2",
    tokens,
    timeoutMs: eventTimeoutMs ?? 5_000,
  });
  const worker = await startEventWorker({
    databaseUrl,
    client,
    retry: FAST_RETRY,
    concurrency: 4,
    leaseMs: 60_000,
    pollIntervalMs: 50,
    stopTimeoutMs: 2_000,
    ...workerOverrides,
  });
  let stopped: Promise<void> | undefined;
  return {
    worker,
    tokens,
    client,
    stop() {
      stopped ??= (async () => {
        await worker.stop();
        await client.close();
        await tokens.close();
      })();
      return stopped;
    },
  };
}

export async function eventRow(db: PrismaReader, id: string) {
  return db.outboxEvent.findUnique({ where: { id }, include: { deliveryAttempts: { orderBy: { attempt: "asc" } } } });
}

export async function jobsOf(db: PrismaReader, orderingKey: string): Promise<number> {
  const rows = await db.$queryRaw<{ n: number }[]>`
    SELECT count(*)::int AS n FROM graphile_worker.jobs WHERE key = ${`deliver:${orderingKey}`}`;
  return rows[0]?.n ?? 0;
}
