/**
 * What operators do with the outbox: list events, read one with its delivery attempts, and put a
 * parked (dead) event back in the delivery queue.
 *
 * A re-sent event keeps its id and its place (seq) in its fleet's queue: it goes out before the
 * fleet's later events still pending, after those already delivered while it was parked.
 */
import type pg from "pg";
import type { Db, Tx } from "../db/prisma.js";
import type { Prisma } from "../generated/prisma/client.js";
import { Conflict, NotFound } from "../errors.js";
import { schedule } from "./delivery.js";

export type OutboxState = "pending" | "delivered" | "dead";

export const EVENT_SORT_FIELDS = ["createdAt", "nextAttemptAt", "deliveredAt", "deadAt", "attempts", "state", "type"] as const;
export type EventSortField = (typeof EVENT_SORT_FIELDS)[number];

export interface EventFilter {
  state?: OutboxState;
  type?: string;
  fleetId?: string;
  orderId?: string;
}

export interface EventPageRequest {
  offset: number;
  limit: number;
  sort: { field: EventSortField; descending: boolean }[];
}

const withAttempts = { deliveryAttempts: { orderBy: { attempt: "asc" } } } satisfies Prisma.OutboxEventInclude;

export type EventRecord = Prisma.OutboxEventGetPayload<object>;
export type EventWithAttempts = Prisma.OutboxEventGetPayload<{ include: typeof withAttempts }>;

/**
 * `schedule()` speaks to a pg connection; this lets it run inside a Prisma transaction, so the
 * event's return to pending and its job commit together.
 */
function asPgConnection(tx: Tx): pg.PoolClient {
  const query = async (text: string, values: unknown[] = []) => {
    await tx.$executeRawUnsafe(text, ...values);
    return { rows: [] };
  };
  return { query } as unknown as pg.PoolClient;
}

export function createEventOperatorService(deps: { db: Db; transactionTimeoutMs: number }) {
  const { db } = deps;

  async function list(filter: EventFilter, page: EventPageRequest): Promise<{ total: number; items: EventRecord[] }> {
    const where: Prisma.OutboxEventWhereInput = {
      state: filter.state,
      type: filter.type,
      fleetId: filter.fleetId,
      orderId: filter.orderId,
    };
    const orderBy: Prisma.OutboxEventOrderByWithRelationInput[] = page.sort.map((s) => ({
      [s.field]: s.descending ? "desc" : "asc",
    }));
    // seq breaks ties (same creation millisecond), following the first key's direction.
    orderBy.push({ seq: page.sort[0]?.descending ? "desc" : "asc" });
    const [total, items] = await db.$transaction([
      db.outboxEvent.count({ where }),
      db.outboxEvent.findMany({ where, orderBy, skip: page.offset, take: page.limit }),
    ]);
    return { total, items };
  }

  async function get(id: string): Promise<EventWithAttempts | null> {
    return db.outboxEvent.findUnique({ where: { id }, include: withAttempts });
  }

  /** A dead event back to pending, with a fresh retry budget, due now; 409 for any other state. */
  async function resend(id: string): Promise<EventWithAttempts> {
    await db.$transaction(
      async (tx) => {
        const [row] = await tx.$queryRaw<{ state: OutboxState; ordering_key: string }[]>`
          SELECT state::text AS state, ordering_key FROM outbox_event WHERE id = ${id} FOR UPDATE`;
        if (!row) throw new NotFound(`event ${JSON.stringify(id)} does not exist`);
        if (row.state !== "dead") {
          throw new Conflict(`event ${id} is ${row.state}; only a dead (parked) event can be re-sent`);
        }
        await tx.$executeRaw`
          UPDATE outbox_event
             SET state = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL, resent_at = now(),
                 last_error = NULL, last_status = NULL, last_request_id = NULL, last_response_body = NULL
           WHERE id = ${id}`;
        await schedule(asPgConnection(tx), row.ordering_key, { delayMs: 0 });
      },
      { timeout: deps.transactionTimeoutMs, maxWait: deps.transactionTimeoutMs },
    );
    return (await get(id))!;
  }

  return { list, get, resend };
}

export type EventOperatorService = ReturnType<typeof createEventOperatorService>;
