/**
 * The SQL of commands to the partner's application (`provisioning_command`, and
 * `provisioning_attempt` for their history), one statement per function, in the caller's
 * transaction or on the pool.
 */
import { empty, join, prepared, raw, sql, type Queryable, type Sql, type Tx } from "../db/sql.js";
import type { JsonValue } from "../lib/json.js";
import { REQUEST_TABLE, type AnswerMode, type RequestKind, type RequestState } from "./requests.dal.js";

export type CommandState = "queued" | "sending" | "waiting" | "retrying" | "done" | "refused" | "parked";

/** The states of a command that still holds its lanes: later commands of a lane wait behind it. */
export const UNFINISHED: CommandState[] = ["queued", "sending", "waiting", "retrying"];

export interface CommandRow {
  id: string;
  seq: number;
  request_kind: RequestKind;
  request_id: string;
  type: string | null;
  lanes: string[];
  state: CommandState;
  attempts: number;
  next_attempt_at: Date;
  lease_until: Date | null;
  plan: JsonValue | null;
  body: string | null;
  result: JsonValue | null;
  created_at: Date;
  prepared_at: Date | null;
  finished_at: Date | null;
  last_status: number | null;
  last_error: string | null;
  ended_by: string | null;
  /** Computed: whether an attempt is due now (retrying and due, or sending and its lease passed). */
  due: boolean;
}

const ADVISORY_NAMESPACE = 0x4f42_0003;

/**
 * Takes the lanes' transaction-scoped locks (sorted, so two transactions never wait on each other
 * in a circle): a second command of a lane then gets its seq only once the first is committed,
 * and a lane's order is the order of its commits.
 */
export async function lockLanes(tx: Tx, lanes: string[]): Promise<void> {
  await tx.query(prepared(lockLanesStatement(lanes)));
}

const lockLanesStatement = (lanes: string[]) => sql`
  SELECT pg_advisory_xact_lock(${ADVISORY_NAMESPACE}::int, hashtext(l))
    FROM unnest(${[...lanes].sort()}::text[]) AS l ORDER BY l`;

/**
 * The columns of a CommandRow, of the table (or alias) `t`; `body: false`, a SettlingRow's;
 * `plan: false`, the plan left out (NULL: the caller holds it).
 */
const columnsOf = (t: string, { body = true, plan = true } = {}) =>
  raw(`${t}.id, ${t}.seq, ${t}.request_kind, ${t}.request_id, ${t}.type, ${t}.lanes, ${t}.state::text AS state, ${t}.attempts,
  ${t}.next_attempt_at, ${t}.lease_until, ${plan ? `${t}.plan` : "NULL::json AS plan"},${body ? ` ${t}.body,` : ""} ${t}.result, ${t}.created_at, ${t}.prepared_at, ${t}.finished_at,
  ${t}.last_status, ${t}.last_error, ${t}.ended_by,
  (${t}.state = 'retrying' AND ${t}.next_attempt_at <= now()) OR (${t}.state = 'sending' AND ${t}.lease_until <= now()) AS due`);

const COLUMNS = columnsOf("provisioning_command");
const SETTLING_COLUMNS = columnsOf("c", { body: false });
const SETTLING_COLUMNS_BUT_PLAN = columnsOf("c", { body: false, plan: false });

/**
 * Statements run within another one, as its first CTEs: the history entries, the request's
 * outcome, written with the command's change in one round trip (one statement: one parse, one
 * plan, one exchange). Each must be a plain INSERT or UPDATE (PostgreSQL allows data-modifying
 * CTEs at the top level only) of a row no other part of the statement writes: all parts run on
 * one snapshot.
 */
function alongside(also: Sql[]): Sql {
  if (also.length === 0) return empty;
  return sql`${join(
    also.map((statement, i) => sql`${raw(`also_${i}`)} AS (${statement})`),
    ",\n",
  )},`;
}

/**
 * An unfinished command: written as the predicate of the index of unfinished commands' lanes
 * (provisioning_command_unfinished_lanes_idx), word for word, so that PostgreSQL sees that a
 * question about lanes with this condition can be answered by that index alone.
 */
const UNFINISHED_EARLIER = sql`p.state IN ('queued', 'sending', 'waiting', 'retrying')`;

const lanesFreeStatement = (lanes: string[]) => sql`
  SELECT 1 FROM provisioning_command p WHERE p.lanes && ${lanes}::text[] AND ${UNFINISHED_EARLIER} LIMIT 1`;

/**
 * The statements of `lockLanes`, then of the look at the lanes: whether an unfinished command
 * holds one of them. For a caller that sends them in one round trip (Tx.queryEach: the second on
 * a snapshot taken once the first has the locks, as two round trips would be), so every command
 * the look can find is an earlier one: the lanes are free, and a new command of them may go at
 * once, when it finds no row.
 */
export function lockAndLookStatements(lanes: string[]): [Sql, Sql] {
  return [lockLanesStatement(lanes), lanesFreeStatement(lanes)];
}

/** A command written with its first attempt, or ended before any (its plan refused). */
export type NewCommand =
  | { state: "queued" }
  | { state: "sending"; leaseMs: number; type: string; /** The plan as JSON text. */ planJson: string; body: string }
  | { state: "refused"; error?: string };

/**
 * The new command, in one statement: `queued` (its turn has not come, or a job prepares it),
 * `sending` with its plan, body and first attempt (its turn came in the inserting transaction:
 * the row is written once, never updated to be prepared), or `refused` (its plan was refused:
 * ended without a call). No other transaction sees it before the commit, so the inserting one
 * holds it as `lockCommand` would. `also`: statements written with it (see `alongside`);
 * `last`: the caller's transaction runs no other statement after it.
 */
export async function insertCommand(
  tx: Tx,
  c: { id: string; kind: RequestKind; requestId: string; lanes: string[] },
  n: NewCommand = { state: "queued" },
  also: Sql[] = [],
  options: { last?: boolean } = {},
): Promise<void> {
  const sending = n.state === "sending" ? n : undefined;
  // The transaction's last statement goes with its COMMIT (Tx.executeLater): one round trip.
  await (options.last ? tx.executeLater.bind(tx) : tx.execute.bind(tx))(
    prepared(sql`
    WITH ${alongside(also)} c AS (
      INSERT INTO provisioning_command (id, request_kind, request_id, lanes, state, attempts, lease_until, type, plan, body, prepared_at, last_error, finished_at)
      VALUES (${c.id}, ${c.kind}, ${c.requestId}, ${c.lanes}::text[], ${n.state}::"CommandState", ${sending ? 1 : 0}::int,
              now() + ${sending?.leaseMs ?? null}::bigint * interval '1 millisecond', ${sending?.type ?? null},
              ${sending?.planJson ?? null}::json, ${sending?.body ?? null}, CASE WHEN ${sending !== undefined} THEN now() END,
              ${n.state === "refused" ? (n.error ?? null) : null}, CASE WHEN ${n.state === "refused"} THEN now() END)
      RETURNING id, attempts)
    INSERT INTO provisioning_attempt (command_id, attempt, started_at)
    SELECT id, attempts, now() FROM c WHERE attempts > 0`),
  );
}

export async function lockCommand(tx: Tx, id: string): Promise<CommandRow | undefined> {
  const [row] = await tx.query<CommandRow>(sql`SELECT ${COLUMNS} FROM provisioning_command WHERE id = ${id} FOR UPDATE`);
  return row;
}

/** The request of a command, as its settling sees it: undefined once it is no longer acknowledged. */
export interface CommandRequest {
  request: JsonValue;
  answerMode: AnswerMode;
}

/** A command as its settling reads it: everything but the body it was sent with (never needed then, and large for a big order). */
export type SettlingRow = Omit<CommandRow, "body">;

/**
 * The command, locked, with its request (locked too, the command first as everywhere else):
 * `lockCommand` then `requests.lockAcknowledged` in one round trip, for the settling of an
 * answer. `request` is undefined when the request is no longer acknowledged. `known`: the
 * request and the command's plan as the caller already holds them (Orange's call that stored
 * them and waits for the outcome): they are not read back.
 */
export async function lockWithRequest(
  tx: Tx,
  kind: RequestKind,
  id: string,
  known?: { request: JsonValue; plan: JsonValue },
): Promise<{ row: SettlingRow; request: CommandRequest | undefined } | undefined> {
  const [found] = await tx.query<SettlingRow & { r_request: JsonValue | null; r_state: RequestState; r_answer_mode: AnswerMode | null }>(
    prepared(sql`
      SELECT ${known === undefined ? SETTLING_COLUMNS : SETTLING_COLUMNS_BUT_PLAN}, ${known === undefined ? raw("r.request") : raw("NULL::jsonb")} AS r_request,
             r.state::text AS r_state, r.answer_mode AS r_answer_mode
        FROM provisioning_command c JOIN ${REQUEST_TABLE[kind]} r ON r.id = c.request_id
       WHERE c.id = ${id} AND c.request_kind = ${kind}
         FOR UPDATE OF c, r`),
  );
  if (!found) return undefined;
  const { r_request, r_state, r_answer_mode, ...row } = found;
  if (known) row.plan = known.plan;
  // Rows stored before the answer mode was recorded were asynchronous (as in requests.lockAcknowledged).
  return {
    row,
    request: r_state === "acknowledged" ? { request: known?.request ?? (r_request as JsonValue), answerMode: r_answer_mode ?? "async" } : undefined,
  };
}

export async function getCommand(q: Queryable, id: string): Promise<CommandRow | undefined> {
  const [row] = await q.query<CommandRow>(sql`SELECT ${COLUMNS} FROM provisioning_command WHERE id = ${id}`);
  return row;
}

export async function commandOfRequest(q: Queryable, kind: RequestKind, requestId: string): Promise<CommandRow | undefined> {
  const [row] = await q.query<CommandRow>(sql`
    SELECT ${COLUMNS} FROM provisioning_command WHERE request_kind = ${kind} AND request_id = ${requestId}`);
  return row;
}

/** Whether no earlier command sharing one of its lanes is unfinished: its turn has come. */
export async function isFirstInLanes(q: Queryable, c: { seq: number; lanes: string[] }): Promise<boolean> {
  const rows = await q.query(sql`
    SELECT 1 FROM provisioning_command p
     WHERE p.lanes && ${c.lanes}::text[] AND p.seq < ${c.seq} AND ${UNFINISHED_EARLIER}
     LIMIT 1`);
  return rows.length === 0;
}

/**
 * Starts an attempt: `sending` until the lease, counted, and its row in the history (one
 * statement: one round trip per attempt); the plan and body are written on the first.
 */
export async function startAttempt(
  tx: Tx,
  id: string,
  a: { attempt: number; leaseMs: number; prepared?: { type: string; plan: JsonValue; body: string } },
): Promise<void> {
  const p = a.prepared;
  await tx.execute(sql`
    WITH started AS (
      UPDATE provisioning_command SET
        state = 'sending', attempts = ${a.attempt}, lease_until = now() + ${a.leaseMs}::bigint * interval '1 millisecond',
        type = COALESCE(${p?.type ?? null}, type), plan = COALESCE(${p ? JSON.stringify(p.plan) : null}::json, plan),
        body = COALESCE(${p?.body ?? null}, body), prepared_at = COALESCE(prepared_at, CASE WHEN ${p !== undefined} THEN now() END)
      WHERE id = ${id}
      RETURNING id)
    INSERT INTO provisioning_attempt (command_id, attempt, started_at)
    SELECT id, ${a.attempt}, now() FROM started
    ON CONFLICT (command_id, attempt) DO NOTHING`);
}

/** Closes the attempts a runner left open (it died or was stopped): they count, as interrupted. */
export async function closeOpenAttempts(tx: Tx, id: string, error: string): Promise<void> {
  await tx.execute(sql`
    UPDATE provisioning_attempt SET finished_at = now(), outcome = 'interrupted', error = ${error}
     WHERE command_id = ${id} AND finished_at IS NULL`);
}

export interface AttemptResult {
  outcome: string;
  status?: number;
  error?: string;
  responseBody?: string;
  durationMs?: number;
}

export interface Settled {
  state: CommandState;
  /** retrying: when the next attempt is due. */
  nextAttemptAt?: Date;
  result?: JsonValue;
  status?: number;
  error?: string;
  responseBody?: string;
  endedBy?: string;
  /** The attempt this settles, finished in the same statement (one round trip). */
  finishing?: { attempt: number } & AttemptResult;
}

/** A command whose turn may have come, and the kind of request it carries out. */
export interface NextCommand {
  id: string;
  request_kind: RequestKind;
}

/**
 * Writes where the command now stands (and when it finished, for a final state), finishes the
 * attempt it settles, and, for a final state, answers the first unfinished command of each of its
 * lanes after it, whose turn may have come: one statement, one round trip. `also`: statements
 * written with it (the attempt's history entry, the request's outcome: see `alongside`).
 */
export async function settleCommand(tx: Tx, id: string, s: Settled, also: Sql[] = []): Promise<NextCommand[]> {
  return distinctNext(await tx.query<NextCommand>(settleStatement(id, s, also)));
}

/**
 * The same, sent without waiting for it: its answer comes with the transaction's COMMIT, and the
 * commands whose turn may have come are known once the transaction has committed.
 */
export function settleCommandLater(tx: Tx, id: string, s: Settled, also: Sql[] = []): Promise<NextCommand[]> {
  const next = tx.queryLater<NextCommand>(settleStatement(id, s, also)).then(distinctNext);
  next.catch(() => {});
  return next;
}

function distinctNext(rows: NextCommand[]): NextCommand[] {
  const seen = new Set<string>();
  return rows.filter((r) => !seen.has(r.id) && seen.add(r.id));
}

function settleStatement(id: string, s: Settled, also: Sql[]) {
  const final = !UNFINISHED.includes(s.state);
  const f = s.finishing;
  return prepared(sql`
    WITH ${alongside(also)} finished AS (
      UPDATE provisioning_attempt SET finished_at = now(), outcome = ${f?.outcome ?? null}, status = ${f?.status ?? null}::int,
             error = ${f?.error ?? null}, response_body = ${f?.responseBody ?? null}, duration_ms = ${f?.durationMs ?? null}::int
       WHERE ${f !== undefined} AND command_id = ${id} AND attempt = ${f?.attempt ?? null}::int),
    settled AS (
      UPDATE provisioning_command SET
        state = ${s.state}::"CommandState",
        next_attempt_at = COALESCE(${s.nextAttemptAt ?? null}::timestamptz, next_attempt_at),
        lease_until = NULL,
        result = COALESCE(${s.result === undefined ? null : JSON.stringify(s.result)}::json, result),
        last_status = COALESCE(${s.status ?? null}::int, last_status),
        last_error = COALESCE(${s.error ?? null}, last_error),
        last_response_body = COALESCE(${s.responseBody ?? null}, last_response_body),
        ended_by = COALESCE(${s.endedBy ?? null}, ended_by),
        finished_at = CASE WHEN ${final} THEN now() END
      WHERE id = ${id}
      RETURNING seq, lanes)
    -- The statement's snapshot precedes the update: the settled row is left out by its seq.
    SELECT DISTINCT ON (l.lane) p.id, p.request_kind
      FROM settled CROSS JOIN LATERAL unnest(settled.lanes) AS l(lane)
      JOIN provisioning_command p ON p.lanes @> ARRAY[l.lane] AND p.seq > settled.seq AND ${UNFINISHED_EARLIER}
     WHERE ${final}
     ORDER BY l.lane, p.seq`);
}

/** A parked command sent again by an operator: queued again with a fresh budget, its place kept. */
export async function requeue(tx: Tx, id: string, by: string): Promise<void> {
  await tx.execute(sql`
    UPDATE provisioning_command SET state = 'queued', attempts = 0, next_attempt_at = now(), created_at = now(),
           lease_until = NULL, finished_at = NULL, ended_by = ${by}
     WHERE id = ${id}`);
}

/** Whether a later command shares a lane with this one (it went on while this one was parked). */
export async function hasLaterInLanes(q: Queryable, c: { seq: number; lanes: string[] }): Promise<boolean> {
  const rows = await q.query(sql`
    SELECT 1 FROM provisioning_command p WHERE p.lanes && ${c.lanes}::text[] AND p.seq > ${c.seq} LIMIT 1`);
  return rows.length > 0;
}

/**
 * What the sweep looks at: commands that should be moving and may have no runner (queued,
 * retrying and due, sending past their lease), and those past the age bound (waiting for a 202
 * result that never came, say).
 */
export async function listStalled(
  q: Queryable,
  maxAgeMs: number,
  limit: number,
): Promise<{ id: string; request_kind: RequestKind; state: CommandState; expired: boolean }[]> {
  return q.query(sql`
    SELECT id, request_kind, state::text AS state, created_at < now() - ${maxAgeMs}::bigint * interval '1 millisecond' AS expired
      FROM provisioning_command
     WHERE state = 'queued'
        OR (state = 'retrying' AND next_attempt_at <= now())
        OR (state = 'sending' AND lease_until <= now())
        OR (state = 'waiting' AND created_at < now() - ${maxAgeMs}::bigint * interval '1 millisecond')
     ORDER BY seq
     LIMIT ${limit}`);
}

export interface CommandListFilter {
  state?: CommandState;
  type?: string;
  requestId?: string;
  lane?: string;
}

/** Commands matching the filter, newest first, and how many match. */
export async function listCommands(
  q: Queryable,
  filter: CommandListFilter,
  page: { offset: number; limit: number },
): Promise<{ total: number; items: CommandRow[] }> {
  const where = sql`WHERE (${filter.state ?? null}::text IS NULL OR state::text = ${filter.state ?? null})
    AND (${filter.type ?? null}::text IS NULL OR type = ${filter.type ?? null})
    AND (${filter.requestId ?? null}::text IS NULL OR request_id = ${filter.requestId ?? null})
    AND (${filter.lane ?? null}::text IS NULL OR lanes @> ARRAY[${filter.lane ?? null}::text])`;
  const [count] = await q.query<{ n: number }>(sql`SELECT count(*) AS n FROM provisioning_command ${where}`);
  const items = await q.query<CommandRow>(sql`
    SELECT ${COLUMNS} FROM provisioning_command ${where} ORDER BY seq DESC OFFSET ${page.offset} LIMIT ${page.limit}`);
  return { total: count?.n ?? 0, items };
}

export interface AttemptRow {
  attempt: number;
  started_at: Date;
  finished_at: Date | null;
  outcome: string | null;
  status: number | null;
  error: string | null;
  response_body: string | null;
  duration_ms: number | null;
}

export async function attemptsOf(q: Queryable, id: string): Promise<AttemptRow[]> {
  return q.query<AttemptRow>(sql`
    SELECT attempt, started_at, finished_at, outcome, status, error, response_body, duration_ms
      FROM provisioning_attempt WHERE command_id = ${id} ORDER BY attempt`);
}
