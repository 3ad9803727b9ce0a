/**
 * The SQL of Orange's requests: `product_order` (orders) and `licence_update` (updates), one
 * statement per function, each taking the caller's transaction (or the pool). Both tables share
 * the lifecycle's columns (idempotency key, request, answer, state, failure); the few columns of
 * one kind only are named where they are written.
 */
import { prepared, raw, sql, type Queryable, type Sql, type Tx } from "../db/sql.js";
import type { JsonValue } from "../lib/json.js";
import { entriesStatement, type HistoryEntry } from "./history.dal.js";

export type RequestKind = "order" | "update";
export type RequestState = "acknowledged" | "completed" | "failed";

const TABLE = { order: raw("product_order"), update: raw("licence_update") } as const;

/** The table of a kind of request, for the statements of commands.dal that lock a command with its request. */
export const REQUEST_TABLE: Readonly<Record<RequestKind, Sql>> = TABLE;

/** The row a retry under an already used key is answered from. */
export interface StoredRequest {
  id: string;
  request_hash: string;
  response: JsonValue;
}

export type AnswerMode = "sync" | "async" | "auto";

export interface NewRequest {
  id: string;
  /** How Orange hears the outcome (auto: the answer, or an event once it had to be acknowledged). */
  answerMode: AnswerMode;
  idempotencyKey?: string;
  orangeRef?: string;
  requestHash: string;
  request: JsonValue;
  createdAt: Date;
  /** Orders: the use case and the quantity asked; updates: the licences named. */
  order?: { useCase: string; quantity?: number };
  update?: { licenceIds: string[] };
}

/**
 * Stores a request `acknowledged` under its idempotency key; false when the key is taken. ON
 * CONFLICT waits for a concurrent transaction holding the same key, so two identical requests
 * never both go on: the second sees the first's row once it commits.
 */
export async function insertRequest(tx: Tx, kind: RequestKind, r: NewRequest): Promise<boolean> {
  return (await tx.query(prepared(insertRequestStatement(kind, r)))).length > 0;
}

/**
 * Stores a request `acknowledged` with its answer (the acknowledgement) and its history entries
 * in one statement, which is its own transaction: one round trip. False when the key is taken:
 * nothing is written then (a retry, or a conflict, is for `insertRequest`'s transaction).
 */
export async function insertAcknowledged(q: Queryable, kind: RequestKind, r: NewRequest, response: JsonValue, entries: HistoryEntry[]): Promise<boolean> {
  const rows = await q.query(
    prepared(sql`
    WITH r AS (${insertRequestStatement(kind, r, response)}),
         h AS (${entriesStatement(entries, sql`EXISTS (SELECT 1 FROM r)`)})
    SELECT id FROM r`),
  );
  return rows.length > 0;
}

/** The INSERT of `insertRequest` (a row when it inserted), for a caller that sends it with other statements; `response`: the answer stored with it. */
export function insertRequestStatement(kind: RequestKind, r: NewRequest, response: JsonValue | null = null): Sql {
  const common = sql`${r.id}, ${r.idempotencyKey ?? null}, ${r.orangeRef ?? null}, ${r.requestHash},
                     ${JSON.stringify(r.request)}::json, 'acknowledged'::"RequestState", ${r.createdAt}, ${r.answerMode},
                     ${response === null ? null : JSON.stringify(response)}::json`;
  return kind === "order"
    ? sql`
        INSERT INTO product_order (id, idempotency_key, orange_ref, request_hash, request, state, created_at,
                                   answer_mode, response, use_case, quantity)
        VALUES (${common}, ${r.order?.useCase ?? null}, ${r.order?.quantity ?? null})
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id`
    : sql`
        INSERT INTO licence_update (id, idempotency_key, orange_ref, request_hash, request, state, created_at,
                                    answer_mode, response, licence_ids)
        VALUES (${common}, ${r.update?.licenceIds ?? []}::text[])
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id`;
}

export async function findByIdempotencyKey(tx: Tx, kind: RequestKind, key: string | undefined): Promise<StoredRequest | undefined> {
  const [row] = await tx.query<StoredRequest>(prepared(sql`
    SELECT id, request_hash, response FROM ${TABLE[kind]} WHERE idempotency_key = ${key ?? null}`));
  return row;
}

/** The answer a retry of the same reference gets (async: the acknowledgement). */
export async function storeResponse(tx: Tx, kind: RequestKind, id: string, response: JsonValue): Promise<void> {
  await tx.execute(prepared(sql`UPDATE ${TABLE[kind]} SET response = ${JSON.stringify(response)}::json WHERE id = ${id}`));
}

type LockedRow = { request: JsonValue; state: RequestState; answer_mode: AnswerMode | null };

const lockStatement = (kind: RequestKind, id: string) =>
  prepared(sql`SELECT request, state, answer_mode FROM ${TABLE[kind]} WHERE id = ${id} FOR UPDATE`);

function acknowledgedOf(row: LockedRow | undefined): { request: JsonValue; answerMode: AnswerMode } | undefined {
  if (row?.state !== "acknowledged") return undefined;
  // Rows stored before the answer mode was recorded were asynchronous (a sync one never stays acknowledged).
  return { request: row.request, answerMode: row.answer_mode ?? "async" };
}

/** The stored request, locked, while it is still to be carried out; undefined once it is not. */
export async function lockAcknowledged(
  tx: Tx,
  kind: RequestKind,
  id: string,
): Promise<{ request: JsonValue; answerMode: AnswerMode } | undefined> {
  const [row] = await tx.query<LockedRow>(lockStatement(kind, id));
  return acknowledgedOf(row);
}

/**
 * The unfinished updates acknowledged before update `id` that name one of its licences, locked
 * (see lockAcknowledgedInTurn). Exported for its plan's test.
 */
export function earlierUnfinishedUpdates(id: string): Sql {
  return sql`
    SELECT p.id, p.created_at FROM licence_update u JOIN licence_update p ON p.licence_ids && u.licence_ids
     WHERE u.id = ${id} AND p.state = 'acknowledged' AND (p.created_at, p.id) < (u.created_at, u.id)
     ORDER BY p.created_at, p.id
       FOR UPDATE OF p`;
}

/**
 * The same, and for an update the updates acknowledged before it (Orange sent them first) that
 * name one of its licences and are still unfinished, locked, oldest first: empty when it is next
 * for each of its licences. A run of an earlier one under way is waited for, in the same round
 * trip; its commit finishes it, and it is not returned. Orders: never any (each creates what it
 * names). So the changes of a licence are carried out in Orange's order, whatever the order in
 * which their runs start (two at once, or a failed run tried again later).
 */
export async function lockAcknowledgedInTurn(
  tx: Tx,
  kind: RequestKind,
  id: string,
): Promise<{ request: JsonValue; answerMode: AnswerMode; earlier: { id: string; createdAt: Date }[] } | undefined> {
  if (kind !== "update") {
    const row = await lockAcknowledged(tx, kind, id);
    return row && { ...row, earlier: [] };
  }
  const [[row], earlier] = (await tx.queryEach([
    lockStatement(kind, id),
    // The partial index of acknowledged updates' licences finds them (a few at most).
    prepared(earlierUnfinishedUpdates(id)),
  ])) as [LockedRow[], { id: string; created_at: Date }[]];
  const acknowledged = acknowledgedOf(row);
  return acknowledged && { ...acknowledged, earlier: earlier.map((e) => ({ id: e.id, createdAt: e.created_at })) };
}

/** The request as Orange sent it. */
export async function requestOf(q: Queryable, kind: RequestKind, id: string): Promise<JsonValue | undefined> {
  const [row] = await q.query<{ request: JsonValue }>(sql`SELECT request FROM ${TABLE[kind]} WHERE id = ${id}`);
  return row?.request;
}

/** Where a request stands and what it answers (null while a sync answer is still to come). */
export async function answerOf(q: Queryable, kind: RequestKind, id: string): Promise<{ state: RequestState; response: JsonValue } | undefined> {
  const [row] = await q.query<{ state: RequestState; response: JsonValue }>(prepared(sql`
    SELECT state, response FROM ${TABLE[kind]} WHERE id = ${id}`));
  return row;
}

/**
 * auto mode past the deadline: Orange is answered `acknowledged` and will hear the outcome as an
 * event. Only while the request is still in progress: the stored answer otherwise (it just ended).
 */
export async function switchToAsync(tx: Tx, kind: RequestKind, id: string, acknowledgement: JsonValue): Promise<JsonValue> {
  const [row] = await tx.query<{ response: JsonValue }>(sql`
    UPDATE ${TABLE[kind]} SET answer_mode = 'async',
           response = CASE WHEN state = 'acknowledged' THEN ${JSON.stringify(acknowledgement)}::json ELSE response END
     WHERE id = ${id}
    RETURNING response`);
  return row!.response;
}

/** A failed request carried out again (an operator retried its parked command): in progress, its outcome by event. */
export async function reopen(tx: Tx, kind: RequestKind, id: string, acknowledgement: JsonValue): Promise<void> {
  await tx.execute(sql`
    UPDATE ${TABLE[kind]} SET state = 'acknowledged', answer_mode = 'async', response = ${JSON.stringify(acknowledgement)}::json,
           failure_reason = NULL, completed_at = NULL
     WHERE id = ${id}`);
}

export interface FinishedRequest {
  id: string;
  state: "completed" | "failed";
  reason?: string;
  completedAt: Date;
  /** Orders: what the order created or used. */
  customerId?: string;
  fleetId?: string;
}

/** Records the outcome; `response` null keeps the stored answer (async: the acknowledgement). */
export async function finishRequest(tx: Tx, kind: RequestKind, f: FinishedRequest, response: JsonValue | null): Promise<void> {
  await tx.execute(prepared(finishStatement(kind, f, response)));
}

/** The UPDATE of `finishRequest`, for a caller that runs it within another statement (see commands.dal). */
export function finishStatement(kind: RequestKind, f: FinishedRequest, response: JsonValue | null): Sql {
  const common = sql`state = ${f.state}::"RequestState",
    response = COALESCE(${response === null ? null : JSON.stringify(response)}::json, response),
    failure_reason = ${f.reason ?? null}, completed_at = ${f.completedAt}`;
  return kind === "order"
    ? sql`UPDATE product_order SET ${common}, customer_id = ${f.customerId ?? null}, fleet_id = ${f.fleetId ?? null}
          WHERE id = ${f.id}`
    : sql`UPDATE licence_update SET ${common} WHERE id = ${f.id}`;
}

/**
 * A failed attempt at carrying out an acknowledged request, counted and kept for operators; the
 * new count decides whether it is tried again.
 */
export async function recordFailedAttempt(q: Queryable, kind: RequestKind, id: string, error: string): Promise<number | undefined> {
  const [row] = await q.query<{ attempts: number }>(sql`
    UPDATE ${TABLE[kind]} SET attempts = attempts + 1, last_error = ${error}
     WHERE id = ${id} AND state = 'acknowledged'
    RETURNING attempts`);
  return row?.attempts;
}

/** Acknowledged requests older than `olderThanMs`, oldest first: those the worker's sweep looks at. */
export async function listAcknowledged(
  q: Queryable,
  kind: RequestKind,
  olderThanMs: number,
  limit: number,
): Promise<{ id: string; attempts: number; created_at: Date }[]> {
  return q.query(sql`
    SELECT id, attempts, created_at FROM ${TABLE[kind]} r
     WHERE state = 'acknowledged' AND created_at < now() - ${olderThanMs}::bigint * interval '1 millisecond'
       -- A request the partner's application carries out moves with its command, not with a job.
       AND NOT EXISTS (SELECT 1 FROM provisioning_command c WHERE c.request_kind = ${kind} AND c.request_id = r.id)
     ORDER BY created_at
     LIMIT ${limit}`);
}
