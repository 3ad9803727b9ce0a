/**
 * What operators do with the outbox: list events, read one with its delivery attempts, put a
 * parked (dead) event back in the delivery queue (one, or all those matching a filter, capped),
 * discard a dead event, and list the ordering keys a dead event holds.
 *
 * A dead event holds the later events of its ordering key (delivery.ts): "one fleet's events
 * arrive in the order they were written". A re-sent event keeps its id and its place (seq) in its
 * fleet's queue: it goes out first, before the events that waited behind it. A discarded event is
 * never sent; its key's later events then go out. Both actions schedule the key's delivery job in
 * the transaction that changes the event, and give the events that waited a fresh age budget.
 */
import { join, raw, sql, type Db, type Sql, type Tx } from "../db/sql.js";
import { Conflict, NotFound } from "../errors.js";
import { recordEventActions } from "../domain/history.dal.js";
import { prune, type JsonObject, type JsonValue } from "../lib/json.js";
import { DELIVER_TASK, jobKeyOf } from "./outbox.js";

export type OutboxState = "pending" | "delivered" | "dead" | "discarded";

export const EVENT_SORT_FIELDS = [
  "createdAt",
  "nextAttemptAt",
  "deliveredAt",
  "deadAt",
  "discardedAt",
  "attempts",
  "state",
  "type",
] as const;
export type EventSortField = (typeof EVENT_SORT_FIELDS)[number];

const SORT_COLUMNS: Record<EventSortField, string> = {
  createdAt: "created_at",
  nextAttemptAt: "next_attempt_at",
  deliveredAt: "delivered_at",
  deadAt: "dead_at",
  discardedAt: "discarded_at",
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

/** Most events one bulk re-send puts back in the queue; the answer says how many still match. */
export const RESEND_MAX_PER_CALL = 1000;

export interface EventPageRequest {
  offset: number;
  limit: number;
  sort: { field: EventSortField; descending: boolean }[];
}

export interface EventRecord {
  id: string;
  seq: number;
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
  discardedAt: Date | null;
  discardedBy: string | null;
  discardReason: string | null;
  releasedAt: Date | null;
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

export type EventWithAttempts = EventRecord & {
  deliveryAttempts: DeliveryAttemptRecord[];
  /** A pending event held behind a dead one of its key: that dead event's id. */
  heldBy: string | null;
};

/** An ordering key held by a dead event. */
export interface HeldKey {
  orderingKey: string;
  /** The key's first dead event: the one the others wait behind. */
  event: EventRecord;
  /** Pending events of the key behind it. */
  waiting: number;
  /** Since when the key is held: when that event was parked. */
  since: Date;
}

export interface BulkResendResult {
  /** The events re-sent, oldest first (seq order). */
  resent: { id: string; orderingKey: string }[];
  /** Dead events still matching the filter (beyond the cap of one call). */
  remaining: number;
}

/** A dead event's key and place in it. */
interface KeyHead {
  orderingKey: string;
  seq: number;
}

const EVENT_COLUMNS = raw(`id, seq, api, type, state::text AS state, ordering_key AS "orderingKey", fleet_id AS "fleetId",
  order_id AS "orderId", update_id AS "updateId", attempts, next_attempt_at AS "nextAttemptAt", last_error AS "lastError",
  last_status AS "lastStatus", last_request_id AS "lastRequestId", last_response_body AS "lastResponseBody",
  created_at AS "createdAt", delivered_at AS "deliveredAt", dead_at AS "deadAt", resent_at AS "resentAt",
  discarded_at AS "discardedAt", discarded_by AS "discardedBy", discard_reason AS "discardReason",
  released_at AS "releasedAt", body`);

/** A dead event back to pending: fresh retry budget, due now, same id and seq, history kept. */
const RESEND_SET = raw(`state = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL, resent_at = now(),
  last_error = NULL, last_status = NULL, last_request_id = NULL, last_response_body = NULL`);

function whereOf(filter: EventFilter): Sql {
  const conditions = [
    filter.state !== undefined ? sql`state = ${filter.state}::"OutboxState"` : undefined,
    filter.type !== undefined ? sql`type = ${filter.type}` : undefined,
    filter.fleetId !== undefined ? sql`fleet_id = ${filter.fleetId}` : undefined,
    filter.orderId !== undefined ? sql`order_id = ${filter.orderId}` : undefined,
  ].filter((c) => c !== undefined);
  return conditions.length > 0 ? sql`WHERE ${join(conditions, " AND ")}` : raw("");
}

export function createEventOperatorService(deps: { db: Db }) {
  const { db } = deps;

  async function list(filter: EventFilter, page: EventPageRequest): Promise<{ total: number; items: EventRecord[] }> {
    const where = whereOf(filter);
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
    let heldBy: string | null = null;
    if (event.state === "pending") {
      const [dead] = await db.query<{ id: string }>(sql`
        SELECT id FROM outbox_event
         WHERE ordering_key = ${event.orderingKey} AND state = 'dead' AND seq < ${event.seq}
         ORDER BY seq LIMIT 1`);
      heldBy = dead?.id ?? null;
    }
    return { ...event, deliveryAttempts, heldBy };
  }

  /** Locks the event's row; 404 when unknown, 409 unless dead. */
  async function lockDead(tx: Tx, id: string, action: string): Promise<KeyHead> {
    const [row] = await tx.query<{ state: OutboxState; ordering_key: string; seq: number }>(sql`
      SELECT state::text AS state, ordering_key, seq FROM outbox_event WHERE id = ${id} FOR UPDATE`);
    if (!row) throw new NotFound(`event ${JSON.stringify(id)} does not exist`);
    if (row.state !== "dead") {
      throw new Conflict(`event ${id} is ${row.state}; only a dead (parked) event can be ${action}`);
    }
    return { orderingKey: row.ordering_key, seq: row.seq };
  }

  /**
   * Releases keys an operator action freed (a dead event re-sent or discarded, at `seq`): the
   * events that waited behind it get a fresh age budget (a long hold must not park them at their
   * first retry), and the key's job is scheduled now. One statement, in the caller's transaction.
   */
  async function release(tx: Tx, heads: KeyHead[]): Promise<void> {
    const first = new Map<string, number>();
    for (const h of heads) {
      const seen = first.get(h.orderingKey);
      if (seen === undefined || h.seq < seen) first.set(h.orderingKey, h.seq);
    }
    if (first.size === 0) return;
    await tx.query(sql`
      WITH released AS (
        SELECT k, s FROM unnest(${[...first.keys()]}::text[], ${[...first.values()]}::bigint[]) AS r(k, s)
      ),
      waited AS (
        UPDATE outbox_event e SET released_at = now()
          FROM released r
         WHERE e.ordering_key = r.k AND e.state = 'pending' AND e.seq > r.s
      )
      SELECT count(graphile_worker.add_job(
               ${DELIVER_TASK}::text,
               json_build_object('orderingKey', k),
               job_key => ${jobKeyOf("")}::text || k,
               job_key_mode => 'replace')) AS n
        FROM released`);
  }

  /**
   * A dead event back to pending, with a fresh retry budget, due now; 409 for any other state.
   * `by`: the credential that asked, kept in the history.
   */
  async function resend(id: string, by: string): Promise<EventWithAttempts> {
    await db.transaction(async (tx) => {
      const head = await lockDead(tx, id, "re-sent");
      await tx.execute(sql`UPDATE outbox_event SET ${RESEND_SET} WHERE id = ${id}`);
      await release(tx, [head]);
      await recordEventActions(tx, { kind: "event.resent", eventIds: [id], actor: by });
    });
    return (await get(id))!;
  }

  /**
   * The dead events matching `filter` back to pending, oldest first, at most
   * RESEND_MAX_PER_CALL of them, with their keys' jobs, in one transaction.
   */
  async function resendMatching(filter: Omit<EventFilter, "state">, by: string): Promise<BulkResendResult> {
    const where = whereOf({ ...filter, state: "dead" });
    return db.transaction(async (tx) => {
      const resent = await tx.query<{ id: string; ordering_key: string; seq: number }>(sql`
        WITH picked AS (
          SELECT id FROM outbox_event ${where} ORDER BY seq LIMIT ${RESEND_MAX_PER_CALL} FOR UPDATE
        )
        UPDATE outbox_event e SET ${RESEND_SET}
          FROM picked WHERE e.id = picked.id
        RETURNING e.id, e.ordering_key, e.seq`);
      await release(tx, resent.map((r) => ({ orderingKey: r.ordering_key, seq: r.seq })));
      await recordEventActions(tx, {
        kind: "event.resent",
        eventIds: resent.map((r) => r.id),
        actor: by,
        data: { bulk: prune({ ...filter }) as JsonObject },
      });
      const [left] = await tx.query<{ n: number }>(sql`SELECT count(*) AS n FROM outbox_event ${where}`);
      // RETURNING does not keep the picking order.
      const bySeq = resent.sort((a, b) => a.seq - b.seq);
      return { resent: bySeq.map((r) => ({ id: r.id, orderingKey: r.ordering_key })), remaining: left?.n ?? 0 };
    });
  }

  /**
   * A dead event is never to be sent: final state `discarded`, with who, when and why; its
   * history stays. The key's later events then go out (unless another dead event holds them).
   */
  async function discard(id: string, by: string, reason: string | undefined): Promise<EventWithAttempts> {
    await db.transaction(async (tx) => {
      const head = await lockDead(tx, id, "discarded");
      await tx.execute(sql`
        UPDATE outbox_event
           SET state = 'discarded', discarded_at = now(), discarded_by = ${by}, discard_reason = ${reason ?? null}
         WHERE id = ${id}`);
      await release(tx, [head]);
      await recordEventActions(tx, { kind: "event.discarded", eventIds: [id], actor: by, data: reason === undefined ? undefined : { reason } });
    });
    return (await get(id))!;
  }

  /** Ordering keys held by a dead event, held longest first. */
  async function held(page: { offset: number; limit: number }): Promise<{ total: number; items: HeldKey[] }> {
    return db.transaction(
      async (tx) => {
        const [count] = await tx.query<{ n: number }>(sql`
          SELECT count(DISTINCT ordering_key) AS n FROM outbox_event WHERE state = 'dead'`);
        const rows = await tx.query<EventRecord & { waiting: number; since: Date }>(sql`
          SELECT ${EVENT_COLUMNS}, dead_at AS since,
                 (SELECT count(*) FROM outbox_event p
                   WHERE p.ordering_key = h.ordering_key AND p.state = 'pending' AND p.seq > h.seq) AS waiting
            FROM (SELECT DISTINCT ON (ordering_key) * FROM outbox_event WHERE state = 'dead' ORDER BY ordering_key, seq) h
           ORDER BY h.dead_at, h.seq
          OFFSET ${page.offset} LIMIT ${page.limit}`);
        const items = rows.map(({ waiting, since, ...event }) => ({ orderingKey: event.orderingKey, event, waiting, since }));
        return { total: count?.n ?? 0, items };
      },
      { readOnlySnapshot: true },
    );
  }

  return { list, get, resend, resendMatching, discard, held };
}

export type EventOperatorService = ReturnType<typeof createEventOperatorService>;
