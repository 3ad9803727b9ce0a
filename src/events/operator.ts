/**
 * What operators do with the outbox: list events, read one with its delivery attempts, and put a
 * parked (dead) event back in the delivery queue.
 *
 * A re-sent event keeps its id and its place (seq) in its fleet's queue: it goes out before the
 * fleet's later events still pending, after those already delivered while it was parked.
 */
import { join, raw, sql, type Db } from "../db/sql.js";
import { Conflict, NotFound } from "../errors.js";
import type { JsonValue } from "../lib/json.js";
import { schedule } from "./delivery.js";

export type OutboxState = "pending" | "delivered" | "dead";

export const EVENT_SORT_FIELDS = ["createdAt", "nextAttemptAt", "deliveredAt", "deadAt", "attempts", "state", "type"] as const;
export type EventSortField = (typeof EVENT_SORT_FIELDS)[number];

const SORT_COLUMNS: Record<EventSortField, string> = {
  createdAt: "created_at",
  nextAttemptAt: "next_attempt_at",
  deliveredAt: "delivered_at",
  deadAt: "dead_at",
  attempts: "attempts",
  state: "state",
  type: "type",
};

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

export interface EventRecord {
  id: string;
  api: string;
  type: string;
  state: OutboxState;
  orderingKey: string;
  fleetId: string | null;
  orderId: string | null;
  updateId: string | null;
  attempts: number;
  nextAttemptAt: Date;
  lastError: string | null;
  lastStatus: number | null;
  lastRequestId: string | null;
  lastResponseBody: string | null;
  createdAt: Date;
  deliveredAt: Date | null;
  deadAt: Date | null;
  resentAt: Date | null;
  body: JsonValue;
}

export interface DeliveryAttemptRecord {
  attempt: number;
  workerId: string | null;
  startedAt: Date;
  finishedAt: Date | null;
  outcome: string | null;
  status: number | null;
  requestId: string | null;
  responseBody: string | null;
  error: string | null;
}

export type EventWithAttempts = EventRecord & { deliveryAttempts: DeliveryAttemptRecord[] };

const EVENT_COLUMNS = raw(`id, api, type, state::text AS state, ordering_key AS "orderingKey", fleet_id AS "fleetId",
  order_id AS "orderId", update_id AS "updateId", attempts, next_attempt_at AS "nextAttemptAt", last_error AS "lastError",
  last_status AS "lastStatus", last_request_id AS "lastRequestId", last_response_body AS "lastResponseBody",
  created_at AS "createdAt", delivered_at AS "deliveredAt", dead_at AS "deadAt", resent_at AS "resentAt", body`);

export function createEventOperatorService(deps: { db: Db }) {
  const { db } = deps;

  async function list(filter: EventFilter, page: EventPageRequest): Promise<{ total: number; items: EventRecord[] }> {
    const conditions = [
      filter.state !== undefined ? sql`state = ${filter.state}::"OutboxState"` : undefined,
      filter.type !== undefined ? sql`type = ${filter.type}` : undefined,
      filter.fleetId !== undefined ? sql`fleet_id = ${filter.fleetId}` : undefined,
      filter.orderId !== undefined ? sql`order_id = ${filter.orderId}` : undefined,
    ].filter((c) => c !== undefined);
    const where = conditions.length > 0 ? sql`WHERE ${join(conditions, " AND ")}` : raw("");
    // seq breaks ties (same creation millisecond), following the first key's direction.
    const order = join(
      [
        ...page.sort.map((s) => raw(`${SORT_COLUMNS[s.field]} ${s.descending ? "DESC" : "ASC"}`)),
        raw(`seq ${page.sort[0]?.descending ? "DESC" : "ASC"}`),
      ],
      ", ",
    );
    return db.transaction(
      async (tx) => {
        const [count] = await tx.query<{ n: number }>(sql`SELECT count(*) AS n FROM outbox_event ${where}`);
        const items = await tx.query<EventRecord>(sql`
          SELECT ${EVENT_COLUMNS} FROM outbox_event ${where} ORDER BY ${order} OFFSET ${page.offset} LIMIT ${page.limit}`);
        return { total: count?.n ?? 0, items };
      },
      { readOnlySnapshot: true },
    );
  }

  async function get(id: string): Promise<EventWithAttempts | null> {
    const [event] = await db.query<EventRecord>(sql`SELECT ${EVENT_COLUMNS} FROM outbox_event WHERE id = ${id}`);
    if (!event) return null;
    const deliveryAttempts = await db.query<DeliveryAttemptRecord>(sql`
      SELECT attempt, worker_id AS "workerId", started_at AS "startedAt", finished_at AS "finishedAt",
             outcome::text AS outcome, status, request_id AS "requestId", response_body AS "responseBody", error
        FROM event_delivery_attempt WHERE event_id = ${id} ORDER BY attempt`);
    return { ...event, deliveryAttempts };
  }

  /** A dead event back to pending, with a fresh retry budget, due now; 409 for any other state. */
  async function resend(id: string): Promise<EventWithAttempts> {
    await db.transaction(async (tx) => {
      const [row] = await tx.query<{ state: OutboxState; ordering_key: string }>(sql`
        SELECT state::text AS state, ordering_key FROM outbox_event WHERE id = ${id} FOR UPDATE`);
      if (!row) throw new NotFound(`event ${JSON.stringify(id)} does not exist`);
      if (row.state !== "dead") {
        throw new Conflict(`event ${id} is ${row.state}; only a dead (parked) event can be re-sent`);
      }
      await tx.execute(sql`
        UPDATE outbox_event
           SET state = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL, resent_at = now(),
               last_error = NULL, last_status = NULL, last_request_id = NULL, last_response_body = NULL
         WHERE id = ${id}`);
      await schedule(tx, row.ordering_key, { delayMs: 0 });
    });
    return (await get(id))!;
  }

  return { list, get, resend };
}

export type EventOperatorService = ReturnType<typeof createEventOperatorService>;
