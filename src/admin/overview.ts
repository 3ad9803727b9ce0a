/**
 * The overview an operator on call reads first (GET /admin/v1/overview, the console's first
 * page): requests, events and commands counted by state, the oldest pending event, the parked
 * events and held fleets (from the outbox's operator service), the last calls from Orange.
 *
 * One statement per function, each served by an existing index: the counts by the `state`
 * indexes of each table (index-only), the oldest pending event by outbox_event (state, seq) then
 * (ordering_key, state, seq), the last calls by product_order / licence_update (created_at).
 */
import { sql, type Db, type Queryable } from "../db/sql.js";
import type { EventOperatorService, EventRecord, HeldKey } from "../events/operator.js";

export type CountTable = "orders" | "updates" | "events" | "commands";

export interface StateCount {
  what: CountTable;
  state: string;
  n: number;
}

/** Every table's rows counted by state, in one round trip. */
export function countByState(q: Queryable): Promise<StateCount[]> {
  return q.query<StateCount>(sql`
    SELECT 'orders' AS what, state::text AS state, count(*) AS n FROM product_order GROUP BY state
    UNION ALL
    SELECT 'updates', state::text, count(*) FROM licence_update GROUP BY state
    UNION ALL
    SELECT 'events', state::text, count(*) FROM outbox_event GROUP BY state
    UNION ALL
    SELECT 'commands', state::text, count(*) FROM provisioning_command GROUP BY state`);
}

export interface PendingEventRow {
  id: string;
  type: string;
  ordering_key: string;
  fleet_id: string | null;
  order_id: string | null;
  update_id: string | null;
  attempts: number;
  created_at: Date;
  next_attempt_at: Date;
  age_seconds: number;
  last_status: number | null;
  last_error: string | null;
}

/**
 * The oldest pending event that no dead event holds (held ones are listed with their fleet):
 * the one delivery is late on. As /metrics' partner_events_oldest_pending_age_seconds.
 */
export async function oldestPendingEvent(q: Queryable): Promise<PendingEventRow | undefined> {
  const [row] = await q.query<PendingEventRow>(sql`
    SELECT e.id, e.type, e.ordering_key, e.fleet_id, e.order_id, e.update_id, e.attempts, e.created_at, e.next_attempt_at,
           greatest(extract(epoch FROM now() - e.created_at), 0)::float8 AS age_seconds, e.last_status, e.last_error
      FROM outbox_event e
     WHERE e.state = 'pending'
       AND NOT EXISTS (SELECT 1 FROM outbox_event d WHERE d.ordering_key = e.ordering_key AND d.state = 'dead' AND d.seq < e.seq)
     ORDER BY e.seq
     LIMIT 1`);
  return row;
}

export interface CallRow {
  kind: "order" | "update";
  id: string;
  orange_ref: string | null;
  use_case: string | null;
  state: "acknowledged" | "completed" | "failed";
  failure_reason: string | null;
  answer_mode: string | null;
  received_at: Date;
}

/** The last orders and updates Orange sent, newest first. */
export function lastCalls(q: Queryable, limit: number): Promise<CallRow[]> {
  return q.query<CallRow>(sql`
    SELECT * FROM (
      (SELECT 'order' AS kind, id, orange_ref, use_case, state::text AS state, failure_reason, answer_mode, created_at AS received_at
         FROM product_order ORDER BY created_at DESC, id DESC LIMIT ${limit})
      UNION ALL
      (SELECT 'update', id, orange_ref, NULL, state::text, failure_reason, answer_mode, created_at
         FROM licence_update ORDER BY created_at DESC, id DESC LIMIT ${limit})
    ) calls
    ORDER BY received_at DESC, id DESC
    LIMIT ${limit}`);
}

/** How many parked events, held fleets and calls the overview shows (the listings page the rest). */
export const OVERVIEW_ITEMS = 10;

export interface Overview {
  at: Date;
  counts: StateCount[];
  oldestPendingEvent: PendingEventRow | undefined;
  lastCalls: CallRow[];
  parkedEvents: { total: number; items: EventRecord[] };
  heldFleets: { total: number; items: HeldKey[] };
}

export function createOverviewQueries(deps: { db: Db; events: EventOperatorService }) {
  const { db, events } = deps;
  return {
    async read(): Promise<Overview> {
      const at = new Date();
      // Side by side on the pool, each statement in its own snapshot: the page waits for the
      // slowest one (the counts), not for their sum. A figure may be a few milliseconds older
      // than another, which an operator's screen does not notice.
      const [counts, pending, calls, parkedEvents, heldFleets] = await Promise.all([
        countByState(db),
        oldestPendingEvent(db),
        lastCalls(db, OVERVIEW_ITEMS),
        events.list({ state: "dead" }, { offset: 0, limit: OVERVIEW_ITEMS, sort: [{ field: "deadAt", descending: true }] }),
        events.held({ offset: 0, limit: OVERVIEW_ITEMS }),
      ]);
      return { at, counts, oldestPendingEvent: pending, lastCalls: calls, parkedEvents, heldFleets };
    },
  };
}

export type OverviewQueries = ReturnType<typeof createOverviewQueries>;
