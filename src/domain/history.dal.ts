/**
 * The SQL of the history (`history_entry`), one statement per function, in the caller's
 * transaction (or on the pool for a record that goes with no change). Entries are written with
 * the change they record; the timelines operators read add, from the outbox itself, the events to
 * Orange and their delivery attempts, which are never copied here.
 */
import { empty, prepared, raw, sql, type Queryable, type Sql } from "../db/sql.js";
import type { JsonObject } from "../lib/json.js";

/** What the history records (the timelines add `event.*` and `licence.created`, read elsewhere). */
export type HistoryKind =
  /** Orange's request, with its request ids; `replayed`: a retry answered from the stored answer. */
  | "request.received"
  | "request.replayed"
  /** What Orange was answered: the final state, `acknowledged`, or a 503 to retry. */
  | "request.answered"
  /** The request was carried out (or refused: failed, with the reason). */
  | "request.completed"
  | "request.failed"
  /** A run of an acknowledged request failed for a technical reason (it is tried again). */
  | "request.run-failed"
  /** One licence changed after its order (update, partner-side change): before and after. */
  | "licence.changed"
  /** A partner-side change (UC5) of a fleet's licences, with its event. */
  | "licences.changed"
  /** Commands to the partner's application: prepared, each attempt, parked, ended or re-sent by hand. */
  | "command.prepared"
  | "command.attempt"
  | "command.parked"
  | "command.ended"
  | "command.retried"
  /** Operators' actions on events to Orange. */
  | "event.resent"
  | "event.discarded";

export interface HistoryEntry {
  at: Date;
  kind: HistoryKind;
  /** The order (po_…) or update (upd_…) concerned. */
  requestId?: string;
  customerId?: string;
  fleetId?: string;
  licenceId?: string;
  eventId?: string;
  commandId?: string;
  /** Who acted: `orange`, the admin API credential (`admin`, `application`). */
  actor?: string;
  data?: JsonObject;
}

/**
 * Writes entries in one statement whatever their number (one array per column, unnested in
 * order: the ids follow the array, so entries of one instant keep their order).
 */
export async function insertEntries(q: Queryable, entries: HistoryEntry[]): Promise<void> {
  if (entries.length === 0) return;
  await q.execute(prepared(entriesStatement(entries)));
}

/**
 * The INSERT of `insertEntries`, for a caller that runs it within another statement (a
 * data-modifying CTE of commands.dal or requests.dal: the entries go with the change they record
 * in one round trip). Its text is the same whatever the entries; `when`: a condition, so that
 * they are written only with that change.
 */
export function entriesStatement(entries: HistoryEntry[], when?: Sql): Sql {
  const col = <T>(pick: (e: HistoryEntry) => T | undefined) => entries.map((e) => pick(e) ?? null);
  return sql`
    INSERT INTO history_entry (at, kind, request_id, customer_id, fleet_id, licence_id, event_id, command_id, actor, data)
    SELECT * FROM unnest(
      ${col((e) => e.at)}::timestamptz[], ${col((e) => e.kind)}::text[], ${col((e) => e.requestId)}::text[],
      ${col((e) => e.customerId)}::text[], ${col((e) => e.fleetId)}::text[], ${col((e) => e.licenceId)}::text[],
      ${col((e) => e.eventId)}::text[], ${col((e) => e.commandId)}::text[], ${col((e) => e.actor)}::text[],
      ${col((e) => (e.data === undefined ? undefined : JSON.stringify(e.data)))}::jsonb[])
    ${when === undefined ? empty : sql`WHERE ${when}`}`;
}

/**
 * An operator's action on events (re-send, discard): one entry per event, with the event's order
 * or update and fleet read from the event itself, at the transaction's time (the events' own
 * `resent_at`/`discarded_at`).
 */
export async function recordEventActions(
  q: Queryable,
  a: { kind: "event.resent" | "event.discarded"; eventIds: string[]; actor: string; data?: JsonObject },
): Promise<void> {
  if (a.eventIds.length === 0) return;
  await q.execute(sql`
    INSERT INTO history_entry (at, kind, request_id, fleet_id, event_id, actor, data)
    SELECT now(), ${a.kind}, coalesce(order_id, update_id), fleet_id, id, ${a.actor}, ${a.data === undefined ? null : JSON.stringify(a.data)}::jsonb
      FROM outbox_event WHERE id = ANY(${a.eventIds}::text[])
     ORDER BY seq`);
}

// ---------------------------------------------------------------------------------------------
// Timelines

/** Whose timeline: a request, a fleet, a customer or a licence. */
export type TimelineSubject = { of: "order" | "update" | "fleet" | "customer" | "licence"; id: string };

export interface TimelineRow {
  at: Date;
  kind: string;
  actor: string | null;
  request_id: string | null;
  customer_id: string | null;
  fleet_id: string | null;
  licence_id: string | null;
  event_id: string | null;
  command_id: string | null;
  data: JsonObject | null;
}

/** The history entries of the subject. */
function entriesOf(s: TimelineSubject): Sql {
  const column = { order: "request_id", update: "request_id", fleet: "fleet_id", customer: "customer_id", licence: "licence_id" }[s.of];
  return sql`SELECT h.at, 0 AS src, h.id AS n, h.kind, h.actor, h.request_id, h.customer_id, h.fleet_id, h.licence_id,
                    h.event_id, h.command_id, h.data
               FROM history_entry h WHERE h.${raw(column)} = ${s.id}`;
}

/** The subject's events to Orange (none for a licence: its changes name their update or event). */
function eventsOf(s: TimelineSubject): Sql {
  switch (s.of) {
    case "order":
      return sql`e.order_id = ${s.id}`;
    case "update":
      return sql`e.update_id = ${s.id}`;
    case "fleet":
      return sql`e.fleet_id = ${s.id}`;
    case "customer":
      // Its fleets' events, and those of its orders that made no fleet (UC1, failed UC2).
      return sql`(e.fleet_id = ANY(ARRAY(SELECT id FROM fleet WHERE customer_id = ${s.id}))
               OR e.order_id = ANY(ARRAY(SELECT id FROM product_order WHERE customer_id = ${s.id} AND fleet_id IS NULL)))`;
    case "licence":
      return sql`false`;
  }
}

/** A licence's creation: its order, and what it held then (the first change's `before`, else as it is). */
function createdOf(s: TimelineSubject): Sql {
  if (s.of !== "licence") return empty;
  return sql`
    UNION ALL
    SELECT l.created_at, 0, 0, 'licence.created', NULL, l.order_id, NULL, l.fleet_id, l.id, NULL, NULL,
           jsonb_build_object('after', coalesce(
             (SELECT h.data -> 'before' FROM history_entry h WHERE h.licence_id = l.id AND h.kind = 'licence.changed'
               ORDER BY h.at, h.id LIMIT 1),
             jsonb_strip_nulls(jsonb_build_object('state', l.state, 'externalState', l.external_state, 'offerCode', l.offer_code,
               'endUser', l.end_user, 'login', l.login, 'realizingResource', l.realizing_resource,
               'serviceCharacteristics', l.service_characteristics))))
      FROM licence l WHERE l.id = ${s.id}`;
}

/**
 * Every entry of the timeline: the history's, the events' (written, each delivery attempt, parked)
 * and, for a licence, its creation. Ordered by time; at the same instant, history before the
 * event it led to, an event before its attempts.
 */
function timelineOf(s: TimelineSubject): Sql {
  return sql`
    WITH ev AS MATERIALIZED (
      SELECT e.id, e.seq, e.type, e.state::text AS state, coalesce(e.order_id, e.update_id) AS request_id, e.fleet_id,
             (e.body ->> 'time')::timestamptz AS written_at, e.dead_at
        FROM outbox_event e WHERE ${eventsOf(s)}
    )
    ${entriesOf(s)}
    UNION ALL
    SELECT ev.written_at, 1, ev.seq, 'event.written', NULL, ev.request_id, NULL, ev.fleet_id, NULL, ev.id, NULL,
           jsonb_build_object('type', ev.type, 'state', ev.state)
      FROM ev
    UNION ALL
    SELECT coalesce(a.finished_at, a.started_at), 2, a.id, 'event.attempt', NULL, ev.request_id, NULL, ev.fleet_id, NULL, ev.id,
           NULL, jsonb_strip_nulls(jsonb_build_object('attempt', a.attempt, 'outcome', a.outcome, 'status', a.status,
             'orangeRequestId', a.request_id, 'error', a.error, 'startedAt', a.started_at))
      FROM ev JOIN event_delivery_attempt a ON a.event_id = ev.id
    UNION ALL
    SELECT ev.dead_at, 3, ev.seq, 'event.dead', NULL, ev.request_id, NULL, ev.fleet_id, NULL, ev.id, NULL,
           jsonb_build_object('type', ev.type)
      FROM ev WHERE ev.dead_at IS NOT NULL
    ${createdOf(s)}`;
}

/** One page of the timeline, oldest first (or newest first). */
export async function timeline(
  q: Queryable,
  s: TimelineSubject,
  page: { offset: number; limit: number; newestFirst?: boolean },
): Promise<TimelineRow[]> {
  // At the same instant (the same millisecond: a sync request on a fast machine), a request's
  // reception comes before what it caused. Entries otherwise keep the order they were written in,
  // but the reception of a sync request is written last, with its outcome and answer, in one
  // statement after the changes it made.
  const order = page.newestFirst
    ? raw("at DESC, src DESC, (kind = 'request.received') ASC, n DESC")
    : raw("at, src, (kind = 'request.received') DESC, n");
  return q.query<TimelineRow>(sql`
    SELECT at, kind, actor, request_id, customer_id, fleet_id, licence_id, event_id, command_id, data
      FROM (${timelineOf(s)}) t
     ORDER BY ${order}
    OFFSET ${page.offset} LIMIT ${page.limit}`);
}

export async function countTimeline(q: Queryable, s: TimelineSubject): Promise<number> {
  const [row] = await q.query<{ n: number }>(sql`SELECT count(*) AS n FROM (${timelineOf(s)}) t`);
  return row?.n ?? 0;
}
