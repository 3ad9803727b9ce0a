/**
 * The checks every experiment ends with, read from the database (orders, updates, licences,
 * events, commands) and from the mocks' own records, never from the HTTP answers alone. Each
 * finding goes into the experiment's tally: lost, duplicated, stuck, or a failure in words.
 */
import { isDeepStrictEqual } from "node:util";
import type { Experiment } from "./lab.js";

/** One request Orange sent (with its retries), and what it should have become. */
export interface SentRequest {
  kind: "order" | "update";
  /** Orange's reference (externalReference.id). */
  ref: string;
  /** Orders: licences ordered. */
  quantity?: number;
  /** Every answer Orange got for this reference: the first call and its retries. */
  answers: { status?: number; body?: unknown; error?: string }[];
  /** How it must end once everything settled. */
  expect: "completed" | "failed";
  /** Failed: a text the stored reason must contain. */
  reason?: string;
}

interface RequestRow {
  id: string;
  orange_ref: string;
  state: string;
  response: unknown;
  failure_reason: string | null;
  licences: number;
}

function body(a: { body?: unknown }): Record<string, unknown> | undefined {
  return typeof a.body === "object" && a.body !== null ? (a.body as Record<string, unknown>) : undefined;
}

/** A 2xx answer carrying a request state: Orange holds the partner to it. */
export function isAccepted(a: { status?: number; body?: unknown }): boolean {
  const state = body(a)?.state;
  return a.status !== undefined && a.status >= 200 && a.status < 300 && typeof state === "string" && ["acknowledged", "completed", "failed"].includes(state);
}

/**
 * Every reference Orange sent: at most one stored request, one for every accepted one, ended as
 * expected (still acknowledged: stuck), with exactly the licences ordered, and every answer naming
 * that one request; a final answer (sync mode, or a retry after the end) is the stored outcome.
 */
export async function auditRequests(x: Experiment, sent: readonly SentRequest[]): Promise<Map<string, RequestRow>> {
  const byRef = new Map<string, RequestRow[]>();
  const orders = sent.filter((s) => s.kind === "order").map((s) => s.ref);
  const updates = sent.filter((s) => s.kind === "update").map((s) => s.ref);
  const rows = [
    ...(await x.query<RequestRow>(
      `SELECT o.id, o.orange_ref, o.state::text AS state, o.response, o.failure_reason,
              (SELECT count(*)::int FROM licence l WHERE l.order_id = o.id) AS licences
         FROM product_order o WHERE o.orange_ref = ANY($1::text[])`,
      [orders],
    )),
    ...(await x.query<RequestRow>(
      `SELECT u.id, u.orange_ref, u.state::text AS state, u.response, u.failure_reason, 0 AS licences
         FROM licence_update u WHERE u.orange_ref = ANY($1::text[])`,
      [updates],
    )),
  ];
  for (const row of rows) byRef.set(row.orange_ref, [...(byRef.get(row.orange_ref) ?? []), row]);

  const found = new Map<string, RequestRow>();
  const t = x.tally;
  for (const s of sent) {
    const accepted = s.answers.some(isAccepted);
    if (accepted) t.accepted++;
    const stored = byRef.get(s.ref) ?? [];
    if (stored.length > 1) {
      t.duplicated += stored.length - 1;
      x.fail(`${s.ref}: ${stored.length} ${s.kind}s stored for one Orange reference`);
    }
    const row = stored[0];
    if (!row) {
      if (accepted) {
        t.lost++;
        x.fail(`${s.ref}: accepted, not in the database`);
      }
      continue;
    }
    found.set(s.ref, row);
    if (row.state === "acknowledged") {
      t.stuck++;
      x.fail(`${s.ref}: still acknowledged`);
      continue;
    }
    if (row.state !== s.expect) {
      if (accepted) t.lost++;
      x.fail(`${s.ref}: ended ${row.state}, expected ${s.expect}${row.failure_reason ? ` (${row.failure_reason})` : ""}`);
    } else if (s.reason !== undefined && !row.failure_reason?.includes(s.reason)) {
      x.fail(`${s.ref}: failed with "${row.failure_reason}", expected a reason with "${s.reason}"`);
    }
    if (s.kind === "order") {
      const wanted = row.state === "completed" ? (s.quantity ?? 0) : 0;
      if (row.licences > wanted) {
        t.duplicated++;
        x.fail(`${s.ref}: ${row.licences} licences for ${wanted} ordered`);
      } else if (row.licences < wanted) {
        t.lost++;
        x.fail(`${s.ref}: ${row.licences} licences for ${wanted} ordered`);
      }
    }
    for (const a of s.answers.filter(isAccepted)) {
      const b = body(a)!;
      if (s.kind === "order" && b.id !== row.id) {
        t.duplicated++;
        x.fail(`${s.ref}: answered order ${String(b.id)}, the database holds ${row.id}`);
      }
      if (b.state !== "acknowledged" && !isDeepStrictEqual(b, row.response)) {
        x.fail(`${s.ref}: an answer differs from the stored outcome`);
      }
    }
  }
  return found;
}

interface EventRow {
  id: string;
  seq: string;
  ordering_key: string;
  order_id: string | null;
  update_id: string | null;
  type: string;
  state: string;
  attempts: number;
  body: unknown;
}

export interface EventAudit {
  written: number;
  delivered: number;
  redelivered: number;
}

/**
 * Every event written was delivered (pending: stuck; dead or discarded: lost, since no experiment
 * here may park one), reached the gateway with its stored body and its id, and the events of each
 * ordering key (the fleet) first reached the gateway in the order they were written; each ended
 * request announced once (one event per order, and per fleet of an update).
 */
export async function auditEvents(x: Experiment, opts: { requestIds?: Iterable<string> } = {}): Promise<EventAudit> {
  const t = x.tally;
  const rows = await x.query<EventRow>(
    `SELECT id, seq::text AS seq, ordering_key, order_id, update_id, type, state::text AS state, attempts, body
       FROM outbox_event e ORDER BY e.seq`,
  );
  const byId = new Map(rows.map((r) => [r.id, r]));
  const arrivals = x.gateway.delivered().map((e) => ({ id: (e.body as { id?: string }).id ?? "", body: e.body }));
  const arrived = new Set(arrivals.map((a) => a.id));

  for (const r of rows) {
    if (r.state === "pending") {
      t.stuck++;
      x.fail(`event ${r.id} (${r.type}) still pending after ${r.attempts} attempts`);
    } else if (r.state !== "delivered") {
      t.lost++;
      x.fail(`event ${r.id} (${r.type}) ${r.state} after ${r.attempts} attempts`);
    } else if (!arrived.has(r.id)) {
      t.lost++;
      x.fail(`event ${r.id} marked delivered, never answered 2xx by the gateway`);
    }
  }
  for (const a of arrivals) {
    const row = byId.get(a.id);
    if (!row) x.fail(`the gateway received an event the outbox does not hold (${a.id})`);
    else if (!isDeepStrictEqual(a.body, row.body)) x.fail(`event ${a.id} reached the gateway with another body than stored`);
  }

  // Order per key: the first arrival of each event, in arrival order, is the order of seq.
  const firstArrivals = new Map<string, string[]>();
  const seen = new Set<string>();
  for (const a of arrivals) {
    const row = byId.get(a.id);
    if (!row || seen.has(a.id)) continue;
    seen.add(a.id);
    firstArrivals.set(row.ordering_key, [...(firstArrivals.get(row.ordering_key) ?? []), a.id]);
  }
  let broken = 0;
  for (const [key, ids] of firstArrivals) {
    const written = rows.filter((r) => r.ordering_key === key && arrived.has(r.id)).map((r) => r.id);
    if (!isDeepStrictEqual(ids, written)) {
      broken++;
      const at = ids.findIndex((id, i) => id !== written[i]);
      const name = (id: string | undefined) => (id ? `${id} (seq ${byId.get(id)?.seq}, ${byId.get(id)?.type})` : "nothing");
      x.fail(`events of ${key} arrived out of the order they were written: #${at + 1} was ${name(ids[at])}, expected ${name(written[at])}`);
    }
  }

  // One announcement per ended request (per fleet for an update).
  const perRequest = new Map<string, Set<string>>();
  for (const r of rows) {
    const request = r.order_id ?? r.update_id;
    if (request === null) continue;
    const key = `${request} ${r.ordering_key}`;
    perRequest.set(key, (perRequest.get(key) ?? new Set()).add(r.id));
  }
  for (const [key, ids] of perRequest) {
    if (ids.size > 1) {
      t.duplicated += ids.size - 1;
      x.fail(`request ${key.split(" ")[0]} announced by ${ids.size} events`);
    }
  }
  for (const id of opts.requestIds ?? []) {
    if (![...perRequest.keys()].some((k) => k.startsWith(`${id} `))) {
      t.lost++;
      x.fail(`request ${id} ended without its event`);
    }
  }

  const audit = { written: rows.length, delivered: arrived.size, redelivered: arrivals.length - arrived.size };
  x.note(`events: ${audit.written} written, ${audit.delivered} delivered, ${audit.redelivered} re-deliveries (same id), ${firstArrivals.size} keys in order${broken ? `, ${broken} out of order` : ""}`);
  return audit;
}

/** Requests still acknowledged, events still pending: what is left to do. */
export async function workLeft(x: Experiment): Promise<number> {
  const [row] = await x.query<{ left: number }>(
    `SELECT (SELECT count(*)::int FROM product_order WHERE state = 'acknowledged')
          + (SELECT count(*)::int FROM licence_update WHERE state = 'acknowledged')
          + (SELECT count(*)::int FROM outbox_event WHERE state = 'pending') AS left`,
  );
  return row?.left ?? -1;
}

/** Waits until nothing is left to do (bounded); returns whether it settled. */
export async function settle(x: Experiment, timeoutMs: number): Promise<boolean> {
  return (await x.waitFor(async () => (await workLeft(x)) === 0, timeoutMs, 300)) === true;
}
