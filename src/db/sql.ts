/**
 * The one way the program reaches PostgreSQL: the `pg` driver, with statements written as tagged
 * templates (`sql-template-tag`: `${value}` becomes a bound parameter, never text).
 *
 * Why not the Prisma client at run time: measured on the 2-core machines, a Prisma `$queryRaw`
 * costs ≈ 0.4–0.85 ms of CPU per statement against ≈ 0.14 ms through `pg` (a 5-statement
 * transaction: 3.6–4.6 ms against 0.9–1.2 ms), and the event worker needs what Prisma cannot give
 * (a session advisory lock held by one connection across statements). Prisma stays the schema
 * tool: `prisma/schema.prisma`, its migrations, and the tests' independent reads of the store.
 */
import { createHash } from "node:crypto";
import pg from "pg";
import sqlTag, { type Sql } from "sql-template-tag";

export { empty, join, raw, type Sql } from "sql-template-tag";
export const sql = sqlTag;

/**
 * A statement PostgreSQL parses and plans once per connection (a named prepared statement), then
 * only binds and executes: for the hot statements, where parsing and planning anew cost as much
 * as running them. Named after its text, so the same text always has the same name (pg refuses
 * one name for two texts on a connection) and a new text gets its own.
 */
export interface Prepared {
  readonly name: string;
  readonly text: string;
  readonly values: unknown[];
}

export type Statement = Sql | Prepared;

const preparedNames = new Map<string, string>();

/** `statement` as a named prepared statement; only for statements of a fixed text (no text built from data). */
export function prepared(statement: Sql): Prepared {
  const text = statement.text;
  let name = preparedNames.get(text);
  if (name === undefined) {
    name = `p_${createHash("sha1").update(text).digest("base64url")}`;
    preparedNames.set(text, name);
  }
  return { name, text, values: statement.values };
}

/** What every data-access function takes: the pool (one statement) or the caller's transaction. */
export interface Queryable {
  /** The rows of one statement. */
  query<T extends object = Record<string, unknown>>(statement: Statement): Promise<T[]>;
  /** How many rows one statement wrote. */
  execute(statement: Statement): Promise<number>;
}

/** A transaction in progress: data-access functions join it by taking it as their first argument. */
export interface Tx extends Queryable {
  readonly transaction: true;
  /**
   * Runs `effect` once the transaction has committed, never after a rollback: for what lives
   * outside the database and must not count a change that did not happen (metrics). An effect
   * that throws is ignored.
   */
  afterCommit(effect: () => void): void;
  /**
   * The rows of several statements sent in one round trip (pipelined), each on its own snapshot
   * as separate statements are (one sees what committed while the one before it waited for a lock).
   */
  queryEach(statements: Statement[]): Promise<object[][]>;
  /**
   * A statement whose result the caller does not need: sent at once, not waited for; its answer
   * comes with the transaction's next round trip (its next statement, or COMMIT), and its failure
   * fails the transaction all the same.
   */
  executeLater(statement: Statement): Promise<void>;
  /**
   * The same for a statement whose rows are wanted once the transaction has committed: sent at
   * once and not waited for (its answer comes with the next round trip, COMMIT's at the latest);
   * its failure fails the transaction, and the promise it returns is rejected then.
   */
  queryLater<T extends object = Record<string, unknown>>(statement: Statement): Promise<T[]>;
}

export interface TransactionOptions {
  /** Upper bound of the whole transaction (default: the database's `transactionTimeoutMs`). */
  timeoutMs?: number;
  /** One consistent snapshot, no writes (listings streamed in several statements). */
  readOnlySnapshot?: boolean;
}

export interface Db extends Queryable {
  /**
   * Runs `work` in one transaction: committed when it resolves, rolled back when it throws. Its
   * BEGIN goes out with its first statement, in one round trip (a round trip costs both sides
   * more than a short statement itself), and a transaction that sends nothing begins nothing.
   */
  transaction<T>(work: (tx: Tx) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /** The underlying pool, for the few places that hold a connection themselves (the worker). */
  readonly pool: pg.Pool;
  close(): Promise<void>;
}

export interface CreateDbOptions {
  /** Connections in the pool (pg's default: 10). Keep replicas × poolMax under max_connections. */
  poolMax?: number;
  /**
   * How long a statement may wait for a pooled connection, opening included. pg's own default is
   * forever: a saturated pool or an unreachable server would hang requests.
   */
  connectTimeoutMs?: number;
  /** Default upper bound of one transaction. */
  transactionTimeoutMs?: number;
  applicationName?: string;
  /** An idle pooled connection broke (database restart, network); the pool replaces it. */
  onPoolError?: (error: Error) => void;
  /** How long a connection keeps its statements' plans (default PLAN_MAX_AGE_MS; see refreshPlans). */
  planMaxAgeMs?: number;
}

/** A transaction ran past its bound; it was rolled back. */
export class TransactionTimeout extends Error {
  override readonly name = "TransactionTimeout";
  constructor(readonly timeoutMs: number) {
    super(`the transaction took longer than ${timeoutMs} ms and was rolled back`);
  }
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_TRANSACTION_TIMEOUT_MS = 60_000;

// int8 (counts, sequences) as numbers: every int8 of this schema stays far below 2^53. Set per
// pool, not globally: graphile-worker shares the `pg` module and expects its own parsing.
const INT8_OID = 20;
const types = {
  getTypeParser: ((oid: number, format?: "text" | "binary") =>
    oid === INT8_OID ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format as "text")) as typeof pg.types.getTypeParser,
};

/** How long a pooled connection keeps the plans of its prepared statements (see refreshPlans). */
export const PLAN_MAX_AGE_MS = 10_000;

/**
 * Keeps the plans of a pool's connections fresh: a connection handed out whose plans are older
 * than `maxAgeMs` first drops them (DISCARD PLANS; its prepared statements stay prepared). By
 * PostgreSQL's default, a prepared statement (every statement of this program is one) keeps the
 * generic plan made at its sixth run, from the table sizes of that moment, until the next ANALYZE
 * of its tables, and every pooled connection keeps its own. Made while a table was small (a fresh
 * install, the start of a burst, until autovacuum analyses it again), that plan reads the whole
 * table for what an index finds in a few pages: under load, the delivery of events read its whole
 * attempt table for each event. Planning every run instead (plan_cache_mode=force_custom_plan)
 * made PostgreSQL spend about half as long planning as running the statements; planning again
 * every ten seconds costs a handful of plans per connection, and a plan is then never more than
 * ten seconds of growth behind.
 */
export function refreshPlans(pool: pg.Pool, maxAgeMs = PLAN_MAX_AGE_MS): void {
  const plannedSince = new WeakMap<pg.ClientBase, number>();
  pool.on("connect", (client) => plannedSince.set(client, performance.now()));
  pool.on("acquire", (client) => {
    const now = performance.now();
    if (now - (plannedSince.get(client) ?? now) < maxAgeMs) return;
    plannedSince.set(client, now);
    // Queued ahead of the statements of whoever acquired the connection.
    client.query("DISCARD PLANS").catch(() => {
      // A connection that fails here fails its next statement too, which reports it.
    });
  });
}

export function createDb(connectionString: string, options: CreateDbOptions = {}): Db {
  const pool = new pg.Pool({
    connectionString,
    max: options.poolMax,
    connectionTimeoutMillis: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    application_name: options.applicationName ?? "orange-partner",
    types,
    // A statement goes out as soon as it is issued, behind those still unanswered: a transaction
    // sends its BEGIN with its first statement, and a statement whose result it does not need
    // with the next one, each of them a prepared statement still (Db.transaction).
    pipeline: true,
  });
  let closed = false;
  pool.on("error", (error) => {
    if (!closed) options.onPoolError?.(error);
  });
  // A connection in use that breaks (database restart) emits 'error' on its client, which pg
  // leaves unhandled (the process would die): the statement in flight fails instead, and the
  // transaction's release drops the connection.
  pool.on("connect", (client) => client.on("error", () => {}));
  refreshPlans(pool, options.planMaxAgeMs);
  const defaultTimeoutMs = options.transactionTimeoutMs ?? DEFAULT_TRANSACTION_TIMEOUT_MS;

  return {
    pool,
    async query<T extends object>(statement: Statement) {
      return (await pool.query<T & pg.QueryResultRow>(statement)).rows as T[];
    },
    async execute(statement: Statement) {
      return (await pool.query(statement)).rowCount ?? 0;
    },
    async transaction<T>(work: (tx: Tx) => Promise<T>, txOptions: TransactionOptions = {}): Promise<T> {
      const timeoutMs = txOptions.timeoutMs ?? defaultTimeoutMs;
      const client = await pool.connect();
      const startedAt = performance.now();
      const committed: (() => void)[] = [];
      let broken = false;
      // The bounds are enforced by PostgreSQL too, so a statement or an idle pause that outlives
      // the transaction's budget cannot hold its locks any longer.
      const bound = Math.max(1, Math.ceil(timeoutMs));
      const begin =
        `${txOptions.readOnlySnapshot ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" : "BEGIN"};` +
        `SET LOCAL statement_timeout = ${bound};SET LOCAL idle_in_transaction_session_timeout = ${bound}`;
      /** BEGIN not sent yet: it goes out with the first statement, in the same round trip. */
      let beginPending = true;
      /**
       * Statements sent and not waited for (BEGIN, executeLater's): the connection is pipelined,
       * so the next statement goes out behind them at once, and its answer comes after theirs.
       */
      const unawaited: Promise<unknown>[] = [];
      const checkTime = () => {
        if (performance.now() - startedAt > timeoutMs) throw new TransactionTimeout(timeoutMs);
      };
      /** Sends a statement now; its failure is the caller's to see (through `settle` or its own await). */
      const send = <R extends pg.QueryResultRow>(statement: Statement | string): Promise<pg.QueryResult<R>> => {
        gather(client);
        if (beginPending) {
          beginPending = false;
          unawaited.push(send(begin));
        }
        const result = client.query<R>(statement as pg.QueryConfig);
        // Seen by `settle` or by the caller; never an unhandled rejection meanwhile.
        result.catch(() => {});
        return result;
      };
      /**
       * The answers of the statements sent before, then `result`'s: the first failure in the
       * order they were sent (a statement after a failed one fails only because the transaction
       * is aborted).
       */
      const settle = async <R>(result: Promise<R>): Promise<R> => {
        // Returned, hence seen by the caller, unless a statement before it fails first: then
        // nobody waits for it (queryEach's Promise.all of statements the aborted transaction
        // refuses), and its rejection must not go unhandled (the process stops on one).
        result.catch(() => {});
        const before = unawaited.splice(0);
        await Promise.all(before);
        return result;
      };
      const run = <R extends pg.QueryResultRow>(statement: Statement): Promise<pg.QueryResult<R>> => {
        checkTime();
        return settle(send<R>(statement));
      };
      const tx: Tx = {
        transaction: true,
        async query<R extends object>(statement: Statement) {
          return (await run<R & pg.QueryResultRow>(statement)).rows as R[];
        },
        async execute(statement: Statement) {
          return (await run(statement)).rowCount ?? 0;
        },
        afterCommit(effect) {
          committed.push(effect);
        },
        async queryEach(statements: Statement[]) {
          checkTime();
          const results = statements.map((statement) => send(statement));
          return (await settle(Promise.all(results))).map((r) => r.rows as object[]);
        },
        async executeLater(statement: Statement) {
          checkTime();
          unawaited.push(send(statement));
        },
        queryLater<R extends object>(statement: Statement) {
          checkTime();
          const sent = send<R & pg.QueryResultRow>(statement);
          unawaited.push(sent);
          const rows = sent.then((r) => r.rows as R[]);
          // Seen by the transaction (through `settle`) whether or not the caller ever reads it.
          rows.catch(() => {});
          return rows;
        },
      };
      try {
        const result = await work(tx);
        checkTime();
        // Nothing sent: no transaction was begun, nothing to commit.
        if (!beginPending) await settle(send("COMMIT"));
        for (const effect of committed) {
          try {
            effect();
          } catch {
            // Outside the database and after the fact: it must not turn a commit into an error.
          }
        }
        return result;
      } catch (error) {
        try {
          // Behind whatever is still in flight. ROLLBACK outside a transaction (none begun) only warns.
          await client.query("ROLLBACK");
        } catch {
          // The connection is gone or unusable: it must not go back to the pool.
          broken = true;
        }
        throw error;
      } finally {
        client.release(broken);
      }
    },
    async close() {
      closed = true;
      await pool.end();
    },
  };
}

type Corkable = { cork(): void; uncork(): void };
const gathering = new WeakSet<Corkable>();

/**
 * The statements a transaction sends in one go (BEGIN with its first statement, `queryEach`'s,
 * one left for later with the next, the last with COMMIT) leave in one write: pg writes each
 * statement on its own, a system call apiece, which on a loopback connection cost the server
 * about a third of its CPU under load (measured with --cpu-prof: `writev` under pg's
 * `Query.submit`). The connection's socket is corked until the statements issued before the next
 * turn of the event loop are all written (the uncork comes in `process.nextTick`, after the
 * promise continuations already due). pg's own cork and uncork around each statement nest within.
 */
function gather(client: pg.PoolClient): void {
  const stream = (client as unknown as { connection?: { stream?: Partial<Corkable> } }).connection?.stream;
  if (typeof stream?.cork !== "function" || typeof stream.uncork !== "function") return;
  const socket = stream as Corkable;
  if (gathering.has(socket)) return;
  gathering.add(socket);
  socket.cork();
  process.nextTick(() => {
    gathering.delete(socket);
    socket.uncork();
  });
}

/** A pool or a connection held by its caller (the worker's delivery runs), as a Queryable. */
export function queryable(client: pg.Pool | pg.PoolClient): Queryable {
  return {
    async query<T extends object>(statement: Statement) {
      return (await client.query<T & pg.QueryResultRow>(statement)).rows as T[];
    },
    async execute(statement: Statement) {
      return (await client.query(statement)).rowCount ?? 0;
    },
  };
}
