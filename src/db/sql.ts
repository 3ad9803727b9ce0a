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
  /** The statement it was made from (see TransactionOptions.beginWithFirst). */
  readonly source: Sql;
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
  return { name, text, values: statement.values, source: statement };
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
   * The rows of several statements sent in one round trip, each on its own snapshot as separate
   * statements are (one sees what committed while the one before it waited for a lock): a
   * simple query, the values written in as literals (see TransactionOptions.beginWithFirst).
   */
  queryEach(statements: Statement[]): Promise<object[][]>;
  /**
   * A statement whose result the caller does not need, sent with the transaction's next round
   * trip: its next statement, or COMMIT. Its failure fails the transaction all the same.
   */
  executeLater(statement: Statement): Promise<void>;
}

export interface TransactionOptions {
  /** Upper bound of the whole transaction (default: the database's `transactionTimeoutMs`). */
  timeoutMs?: number;
  /** One consistent snapshot, no writes (listings streamed in several statements). */
  readOnlySnapshot?: boolean;
  /**
   * BEGIN is sent with the transaction's first statement, in one round trip (a round trip costs
   * both sides more than a short statement itself): for the short transactions of the hot path.
   * That statement then goes as a simple query, its values written in as literals that pg
   * escapes (so it is parsed and planned anew, even when prepared); one with a value pg cannot
   * write as text (a Buffer), or too long a text (64 KiB, e.g. a large order's command), goes
   * after a BEGIN of its own, as without this option.
   */
  beginWithFirst?: boolean;
}

export interface Db extends Queryable {
  /** Runs `work` in one transaction: committed when it resolves, rolled back when it throws. */
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
}

/** A transaction ran past its bound; it was rolled back. */
export class TransactionTimeout extends Error {
  override readonly name = "TransactionTimeout";
  constructor(readonly timeoutMs: number) {
    super(`the transaction took longer than ${timeoutMs} ms and was rolled back`);
  }
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

// pg's own conversion of a value to the text it sends as a parameter (arrays, dates, JSON).
const prepareValue = (pg as unknown as { utils: { prepareValue(value: unknown): unknown } }).utils.prepareValue;

/**
 * `statement` with its values written in as escaped literals, for a simple query; undefined when
 * a value has no text form. A literal is typed by its context as a parameter is (both reach
 * PostgreSQL as text of unknown type), so the statement means the same.
 */
function inlined(statement: Statement): string | undefined {
  const source = statement instanceof Object && "source" in statement ? statement.source : (statement as Sql);
  let text = source.strings[0]!;
  for (let i = 0; i < source.values.length; i++) {
    const value = prepareValue(source.values[i]);
    if (value !== null && typeof value !== "string") return undefined;
    text += (value === null ? "NULL" : pg.escapeLiteral(value)) + source.strings[i + 1]!;
    // Escaping is a loop over every character: past this, a round trip costs less than the text.
    if (text.length > MAX_INLINED_CHARS) return undefined;
  }
  return text;
}

const MAX_INLINED_CHARS = 64 * 1024;
const DEFAULT_TRANSACTION_TIMEOUT_MS = 60_000;

// int8 (counts, sequences) as numbers: every int8 of this schema stays far below 2^53. Set per
// pool, not globally: graphile-worker shares the `pg` module and expects its own parsing.
const INT8_OID = 20;
const types = {
  getTypeParser: ((oid: number, format?: "text" | "binary") =>
    oid === INT8_OID ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format as "text")) as typeof pg.types.getTypeParser,
};

export function createDb(connectionString: string, options: CreateDbOptions = {}): Db {
  const pool = new pg.Pool({
    connectionString,
    max: options.poolMax,
    connectionTimeoutMillis: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    application_name: options.applicationName ?? "orange-partner",
    types,
  });
  let closed = false;
  pool.on("error", (error) => {
    if (!closed) options.onPoolError?.(error);
  });
  // A connection in use that breaks (database restart) emits 'error' on its client, which pg
  // leaves unhandled (the process would die): the statement in flight fails instead, and the
  // transaction's release drops the connection.
  pool.on("connect", (client) => client.on("error", () => {}));
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
      // One round trip: the bounds are enforced by PostgreSQL too, so a statement or an idle
      // pause that outlives the transaction's budget cannot hold its locks any longer.
      const bound = Math.max(1, Math.ceil(timeoutMs));
      const begin =
        `${txOptions.readOnlySnapshot ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" : "BEGIN"};` +
        `SET LOCAL statement_timeout = ${bound};SET LOCAL idle_in_transaction_session_timeout = ${bound}`;
      /** BEGIN not sent yet: it goes with the first statement (beginWithFirst). */
      let beginPending = txOptions.beginWithFirst === true;
      /** Statements (simple-query text) that go with the next round trip (executeLater). */
      const later: string[] = [];
      /** What goes before the next statement, in the same simple query; taken once. */
      const ahead = (): string[] => {
        const texts = [...(beginPending ? [begin] : []), ...later];
        beginPending = false;
        later.length = 0;
        return texts;
      };
      const checkTime = () => {
        if (performance.now() - startedAt > timeoutMs) throw new TransactionTimeout(timeoutMs);
      };
      /** Several statements in one simple query: one result each (the BEGIN text holds three); the last `n`. */
      const simple = async (texts: string[], n: number): Promise<pg.QueryResult[]> => {
        const results = (await client.query(texts.join(";"))) as unknown as pg.QueryResult | pg.QueryResult[];
        return (Array.isArray(results) ? results : [results]).slice(-n);
      };
      const run = async <R extends pg.QueryResultRow>(statement: Statement): Promise<pg.QueryResult<R>> => {
        checkTime();
        if (beginPending || later.length > 0) {
          const text = inlined(statement);
          if (text !== undefined) return (await simple([...ahead(), text], 1))[0] as pg.QueryResult<R>;
          await simple(ahead(), 1);
        }
        return client.query<R>(statement);
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
          const texts = statements.map(inlined);
          if (texts.every((t): t is string => t !== undefined)) {
            return (await simple([...ahead(), ...texts], texts.length)).map((r) => r.rows as object[]);
          }
          const rows: object[][] = [];
          for (const statement of statements) rows.push((await run(statement)).rows as object[]);
          return rows;
        },
        async executeLater(statement: Statement) {
          checkTime();
          const text = inlined(statement);
          if (text === undefined) await run(statement);
          else later.push(text);
        },
      };
      try {
        if (!beginPending) await client.query(begin);
        const result = await work(tx);
        checkTime();
        // Nothing sent nor left to send: no transaction was begun, nothing to commit.
        if (later.length > 0) await simple([...ahead(), "COMMIT"], 1);
        else if (!beginPending) await client.query("COMMIT");
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
          // ROLLBACK outside a transaction (none begun) only warns.
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
