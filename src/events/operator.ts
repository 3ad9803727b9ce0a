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
import type { Db, Tx } from "../db/prisma.js";
import { Prisma } from "../generated/prisma/client.js";
import { Conflict, NotFound } from "../errors.js";
import { DELIVER_TASK } from "./outbox.js";

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

const withAttempts = { deliveryAttempts: { orderBy: { attempt: "asc" } } } satisfies Prisma.OutboxEventInclude;

export type EventRecord = Prisma.OutboxEventGetPayload<object>;
export type EventWithAttempts = Prisma.OutboxEventGetPayload<{ include: typeof withAttempts }> & {
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
  seq: bigint;
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
    const event = await db.outboxEvent.findUnique({ where: { id }, include: withAttempts });
    if (!event) return null;
    let heldBy: string | null = null;
    if (event.state === "pending") {
      const [dead] = await db.$queryRaw<{ id: string }[]>`
        SELECT id FROM outbox_event
         WHERE ordering_key = ${event.orderingKey} AND state = 'dead' AND seq < ${event.seq}
         ORDER BY seq LIMIT 1`;
      heldBy = dead?.id ?? null;
    }
    return { ...event, heldBy };
  }

  /** Locks the event's row; 404 when unknown, 409 unless dead. */
  async function lockDead(tx: Tx, id: string, action: string): Promise<KeyHead> {
    const [row] = await tx.$queryRaw<{ state: OutboxState; ordering_key: string; seq: bigint }[]>`
      SELECT state::text AS state, ordering_key, seq FROM outbox_event WHERE id = ${id} FOR UPDATE`;
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
    const first = new Map<string, bigint>();
    for (const h of heads) {
      const seen = first.get(h.orderingKey);
      if (seen === undefined || h.seq < seen) first.set(h.orderingKey, h.seq);
    }
    if (first.size === 0) return;
    await tx.$queryRaw`
      WITH released AS (
        SELECT k, s FROM unnest(${[...first.keys()]}::text[], ${[...first.values()].map(String)}::bigint[]) AS r(k, s)
      ),
      waited AS (
        UPDATE outbox_event e SET released_at = now()
          FROM released r
         WHERE e.ordering_key = r.k AND e.state = 'pending' AND e.seq > r.s
      )
      SELECT count(graphile_worker.add_job(
               ${DELIVER_TASK}::text,
               json_build_object('orderingKey', k),
               job_key => 'deliver:' || k,
               job_key_mode => 'replace'))::int AS n
        FROM released`;
  }

  function transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T> {
    return db.$transaction(work, { timeout: deps.transactionTimeoutMs, maxWait: deps.transactionTimeoutMs });
  }

  /** A dead event back to pending, with a fresh retry budget, due now; 409 for any other state. */
  async function resend(id: string): Promise<EventWithAttempts> {
    await transaction(async (tx) => {
      const head = await lockDead(tx, id, "re-sent");
      await tx.$executeRaw`UPDATE outbox_event SET ${RESEND_SET} WHERE id = ${id}`;
      await release(tx, [head]);
    });
    return (await get(id))!;
  }

  /**
   * The dead events matching `filter` back to pending, oldest first, at most
   * RESEND_MAX_PER_CALL of them, with their keys' jobs, in one transaction.
   */
  async function resendMatching(filter: Omit<EventFilter, "state">): Promise<BulkResendResult> {
    const where = Prisma.join(
      [
        Prisma.sql`state = 'dead'`,
        ...(filter.type === undefined ? [] : [Prisma.sql`type = ${filter.type}`]),
        ...(filter.fleetId === undefined ? [] : [Prisma.sql`fleet_id = ${filter.fleetId}`]),
        ...(filter.orderId === undefined ? [] : [Prisma.sql`order_id = ${filter.orderId}`]),
      ],
      " AND ",
    );
    return transaction(async (tx) => {
      const resent = await tx.$queryRaw<{ id: string; ordering_key: string; seq: bigint }[]>`
        WITH picked AS (
          SELECT id FROM outbox_event WHERE ${where} ORDER BY seq LIMIT ${RESEND_MAX_PER_CALL} FOR UPDATE
        )
        UPDATE outbox_event e SET ${RESEND_SET}
          FROM picked WHERE e.id = picked.id
        RETURNING e.id, e.ordering_key, e.seq`;
      await release(tx, resent.map((r) => ({ orderingKey: r.ordering_key, seq: r.seq })));
      const [left] = await tx.$queryRaw<{ n: number }[]>`SELECT count(*)::int AS n FROM outbox_event WHERE ${where}`;
      // RETURNING does not keep the picking order.
      const bySeq = resent.sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
      return { resent: bySeq.map((r) => ({ id: r.id, orderingKey: r.ordering_key })), remaining: left?.n ?? 0 };
    });
  }

  /**
   * A dead event is never to be sent: final state `discarded`, with who, when and why; its
   * history stays. The key's later events then go out (unless another dead event holds them).
   */
  async function discard(id: string, by: string, reason: string | undefined): Promise<EventWithAttempts> {
    await transaction(async (tx) => {
      const head = await lockDead(tx, id, "discarded");
      await tx.$executeRaw`
        UPDATE outbox_event
           SET state = 'discarded', discarded_at = now(), discarded_by = ${by}, discard_reason = ${reason ?? null}
         WHERE id = ${id}`;
      await release(tx, [head]);
    });
    return (await get(id))!;
  }

  /** Ordering keys held by a dead event, held longest first. */
  async function held(page: { offset: number; limit: number }): Promise<{ total: number; items: HeldKey[] }> {
    const [[count], rows] = await db.$transaction([
      db.$queryRaw<{ n: number }[]>`SELECT count(DISTINCT ordering_key)::int AS n FROM outbox_event WHERE state = 'dead'`,
      db.$queryRaw<{ id: string; ordering_key: string; waiting: number; since: Date }[]>`
        SELECT h.id, h.ordering_key, h.dead_at AS since,
               (SELECT count(*) FROM outbox_event p
                 WHERE p.ordering_key = h.ordering_key AND p.state = 'pending' AND p.seq > h.seq)::int AS waiting
          FROM (SELECT DISTINCT ON (ordering_key) id, ordering_key, seq, dead_at
                  FROM outbox_event WHERE state = 'dead' ORDER BY ordering_key, seq) h
         ORDER BY h.dead_at, h.seq
         OFFSET ${page.offset} LIMIT ${page.limit}`,
    ]);
    const events = await db.outboxEvent.findMany({ where: { id: { in: rows.map((r) => r.id) } } });
    const byId = new Map(events.map((e) => [e.id, e]));
    const items: HeldKey[] = [];
    for (const r of rows) {
      const event = byId.get(r.id);
      // Re-sent or discarded between the two reads: no longer holding.
      if (event?.state === "dead") items.push({ orderingKey: r.ordering_key, event, waiting: r.waiting, since: r.since });
    }
    return { total: count?.n ?? 0, items };
  }

  return { list, get, resend, resendMatching, discard, held };
}

/** A dead event back to pending: fresh retry budget, due now, same id and seq, history kept. */
const RESEND_SET = Prisma.sql`state = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL, resent_at = now(),
  last_error = NULL, last_status = NULL, last_request_id = NULL, last_response_body = NULL`;

export type EventOperatorService = ReturnType<typeof createEventOperatorService>;
