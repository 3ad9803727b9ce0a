import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { prepared, sql } from "../src/db/sql.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";

/**
 * Db.transaction on a pipelined connection: BEGIN goes out with the first statement, and a
 * statement left for later goes out at once, not waited for. The transaction must still be one
 * (rolled back whole, whichever statement fails), its statements in their order, on a real
 * PostgreSQL.
 */
describe("a transaction whose BEGIN goes with its first statement", () => {
  let d: TestDatabase;
  beforeAll(async () => {
    d = await createTestDatabase();
    await d.db.execute(sql`CREATE TABLE sql_tx_probe (id text PRIMARY KEY, n bigint, tags text[], doc jsonb, at timestamptz, ok boolean, bytes bytea)`);
  });
  afterAll(async () => d?.drop());

  const awkward = `it's a \\ "quoted" $1 value; DROP TABLE sql_tx_probe; --`;
  const values = {
    n: 9_007_199_254_740_991,
    tags: ["a,b", "c}", 'd"', "e\\f", "", "ünï"],
    doc: { text: awkward, nested: [1, null, true] },
    at: new Date("2026-11-30T08:15:30.123Z"),
  };

  it("writes and reads every kind of value as parameters would, in one round trip for BEGIN and the first statement", async () => {
    const texts: string[] = [];
    const rows = await d.db.transaction(
      async (tx) => {
        const inserted = await tx.query<{ id: string }>(
          prepared(sql`INSERT INTO sql_tx_probe (id, n, tags, doc, at, ok, bytes)
                       VALUES (${awkward}, ${values.n}, ${values.tags}::text[], ${JSON.stringify(values.doc)}::jsonb, ${values.at}, ${true}, NULL)
                       RETURNING id`),
        );
        texts.push(...inserted.map((r) => r.id));
        return tx.query<{ id: string; n: number; tags: string[]; doc: unknown; at: Date; ok: boolean }>(
          sql`SELECT id, n, tags, doc, at, ok FROM sql_tx_probe WHERE id = ${awkward}`,
        );
      },
    );
    expect(texts).toEqual([awkward]);
    expect(rows).toEqual([{ id: awkward, ...values, ok: true }]);
    // The table is still there, and the row was committed: what another connection sees.
    expect(await d.prisma.$queryRaw`SELECT count(*)::int AS n FROM sql_tx_probe WHERE id = ${awkward}`).toEqual([{ n: 1 }]);
  });

  it("rolls the whole transaction back when a later statement fails, and when the first one does", async () => {
    await expect(
      d.db.transaction(
        async (tx) => {
          await tx.execute(sql`INSERT INTO sql_tx_probe (id) VALUES (${"rolled-back"})`);
          await tx.execute(sql`INSERT INTO sql_tx_probe (id) VALUES (${"rolled-back"})`);
        },
      ),
    ).rejects.toThrow(/duplicate key/);
    await expect(
      d.db.transaction(
        async (tx) => {
          await tx.execute(sql`INSERT INTO sql_tx_probe (id, n) VALUES (${"bad-first"}, ${"not a number"})`);
        },
      ),
    ).rejects.toThrow(/invalid input syntax/);
    expect(await d.prisma.$queryRaw`SELECT id FROM sql_tx_probe WHERE id IN ('rolled-back', 'bad-first')`).toEqual([]);
    // The connections went back to the pool usable, out of any transaction.
    const [state] = await d.db.query<{ open: boolean }>(sql`SELECT now() <> statement_timestamp() AS open`);
    expect(state).toEqual({ open: false });
  });

  it("keeps the transaction's bounds, sent with BEGIN", async () => {
    const [setting] = await d.db.transaction(
      (tx) => tx.query<{ statement_timeout: string }>(sql`SELECT current_setting(${"statement_timeout"}) AS statement_timeout`),
      { timeoutMs: 4321 },
    );
    expect(setting).toEqual({ statement_timeout: "4321ms" });
  });

  it("writes a value that has no text form (bytes) as a parameter", async () => {
    const bytes = Buffer.from([0, 1, 2, 0x27, 0x5c, 255]);
    await d.db.transaction(
      async (tx) => {
        await tx.execute(sql`INSERT INTO sql_tx_probe (id, bytes) VALUES (${"bytes"}, ${bytes})`);
        await tx.execute(sql`UPDATE sql_tx_probe SET ok = ${false} WHERE id = ${"bytes"}`);
      },
    );
    const [row] = await d.db.query<{ bytes: Buffer; ok: boolean }>(sql`SELECT bytes, ok FROM sql_tx_probe WHERE id = ${"bytes"}`);
    expect(row).toEqual({ bytes, ok: false });
  });

  it("writes long values (past 64 KiB) as parameters, left for later or not", async () => {
    const long = "x'\\".repeat(30_000);
    await d.db.transaction(
      async (tx) => {
        await tx.execute(sql`INSERT INTO sql_tx_probe (id, doc) VALUES (${"long-1"}, ${JSON.stringify({ long })}::jsonb)`);
        await tx.executeLater(sql`INSERT INTO sql_tx_probe (id, doc) VALUES (${"long-2"}, ${JSON.stringify({ long })}::jsonb)`);
      },
    );
    const rows = await d.db.query<{ id: string; doc: { long: string } }>(sql`SELECT id, doc FROM sql_tx_probe WHERE id LIKE 'long-%' ORDER BY id`);
    expect(rows).toEqual([
      { id: "long-1", doc: { long } },
      { id: "long-2", doc: { long } },
    ]);
  });

  it("a transaction that ran no statement begins and commits nothing", async () => {
    await expect(d.db.transaction(async () => 42)).resolves.toBe(42);
  });

  it("sends a statement left for later with COMMIT, and fails the transaction, whole, when it fails", async () => {
    const seen = await d.db.transaction(
      async (tx) => {
        await tx.executeLater(sql`INSERT INTO sql_tx_probe (id, n) VALUES (${"later-1"}, ${1})`);
        // A statement after it comes after it: it sees its row.
        const rows = await tx.query<{ n: number }>(sql`SELECT n FROM sql_tx_probe WHERE id = ${"later-1"}`);
        await tx.executeLater(sql`INSERT INTO sql_tx_probe (id, n) VALUES (${"later-2"}, ${2})`);
        return rows;
      },
    );
    expect(seen).toEqual([{ n: 1 }]);
    expect(await d.prisma.$queryRaw`SELECT id FROM sql_tx_probe WHERE id LIKE 'later-%' ORDER BY id`).toEqual([{ id: "later-1" }, { id: "later-2" }]);

    await expect(
      d.db.transaction(async (tx) => {
        await tx.execute(sql`INSERT INTO sql_tx_probe (id) VALUES (${"later-3"})`);
        await tx.executeLater(sql`INSERT INTO sql_tx_probe (id) VALUES (${"later-1"})`);
      }),
    ).rejects.toThrow(/duplicate key/);
    expect(await d.prisma.$queryRaw`SELECT id FROM sql_tx_probe WHERE id = 'later-3'`).toEqual([]);
  });

  it("writes the statements of one round trip to the socket at once: one write for BEGIN, those sent together and those left for later", async () => {
    // Every write of the transaction's connection to its socket, by what it carried.
    const writes: string[] = [];
    const onAcquire = (client: pg.PoolClient) => {
      const socket = (client as unknown as { connection: { stream: { _writev?: unknown; _write: unknown } } }).connection.stream;
      const count = (chunks: Buffer[]) => {
        const text = Buffer.concat(chunks).toString("latin1");
        writes.push([/BEGIN/.test(text) && "BEGIN", ...(text.match(/sql_tx_probe \(id\) VALUES|SELECT count/g) ?? []), /COMMIT/.test(text) && "COMMIT"].filter(Boolean).join(" + "));
      };
      const own = socket as unknown as { _write(chunk: Buffer, enc: string, cb: () => void): void; _writev(chunks: { chunk: Buffer }[], cb: () => void): void };
      const write = own._write.bind(own);
      const writev = own._writev.bind(own);
      own._write = (chunk, enc, cb) => (count([chunk]), write(chunk, enc, cb));
      own._writev = (chunks, cb) => (count(chunks.map((c) => c.chunk)), writev(chunks, cb));
    };
    d.db.pool.once("acquire", onAcquire);
    const n = await d.db.transaction(async (tx) => {
      const [, [counted]] = (await tx.queryEach([
        sql`INSERT INTO sql_tx_probe (id) VALUES (${"gathered-1"})`,
        sql`SELECT count(*)::int AS n FROM sql_tx_probe WHERE id LIKE 'gathered-%'`,
      ])) as [unknown[], { n: number }[]];
      await tx.executeLater(sql`INSERT INTO sql_tx_probe (id) VALUES (${"gathered-2"})`);
      return counted!.n;
    });
    expect(n).toBe(1);
    // Two round trips, two writes: without gathering, pg writes each statement on its own (five).
    expect(writes).toEqual(["BEGIN + sql_tx_probe (id) VALUES + SELECT count", "sql_tx_probe (id) VALUES + COMMIT"]);
    expect(await d.prisma.$queryRaw`SELECT id FROM sql_tx_probe WHERE id LIKE 'gathered-%' ORDER BY id`).toEqual([{ id: "gathered-1" }, { id: "gathered-2" }]);
  });

  it("reports the failure of a statement left for later, not that of the statements behind it (the transaction aborted)", async () => {
    await expect(
      d.db.transaction(async (tx) => {
        await tx.executeLater(sql`INSERT INTO sql_tx_probe (id) VALUES (${"later-1"})`);
        await tx.executeLater(sql`INSERT INTO sql_tx_probe (id) VALUES (${"later-4"})`);
        await tx.query(sql`SELECT 1`);
      }),
    ).rejects.toThrow(/duplicate key value violates unique constraint "sql_tx_probe_pkey"/);
    expect(await d.prisma.$queryRaw`SELECT id FROM sql_tx_probe WHERE id = 'later-4'`).toEqual([]);
    const [state] = await d.db.query<{ open: boolean }>(sql`SELECT now() <> statement_timestamp() AS open`);
    expect(state).toEqual({ open: false });
  });

  it("reports the failure of a statement left for later before those sent together behind it, without an unhandled rejection", async () => {
    // The statements sent together (queryEach) fail too, the transaction being aborted; nobody
    // waits for their answers once the earlier failure is reported: no unhandled rejection may
    // come of them (the server stops on one).
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      await expect(
        d.db.transaction(async (tx) => {
          await tx.executeLater(sql`SELECT 1 / ${0}::int`);
          await tx.queryEach([sql`SELECT 1`, sql`SELECT 2`]);
        }),
      ).rejects.toThrow(/division by zero/);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(unhandled).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });

  it("runs the statements sent in one round trip each on its own snapshot: the second sees what committed while the first waited for a lock", async () => {
    const other = new pg.Client({ connectionString: d.url });
    await other.connect();
    try {
      const key = 0x5eed;
      await other.query("BEGIN");
      await other.query("SELECT pg_advisory_xact_lock($1)", [key]);
      await other.query("INSERT INTO sql_tx_probe (id) VALUES ('snapshot')");
      const looking = d.db.transaction(
        (tx) => tx.queryEach([sql`SELECT pg_advisory_xact_lock(${key}::int)`, sql`SELECT id FROM sql_tx_probe WHERE id = ${"snapshot"}`]),
      );
      // The first statement waits for the lock; the other transaction commits meanwhile.
      await waitUntilWaiting(d, key);
      await other.query("COMMIT");
      const [locked, found] = await looking;
      expect(locked).toHaveLength(1);
      expect(found).toEqual([{ id: "snapshot" }]);
    } finally {
      await other.end();
    }
  });
});

/** Until a session waits for the advisory lock `key`. */
async function waitUntilWaiting(d: TestDatabase, key: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const rows = await d.db.query(sql`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = ${key}`);
    if (rows.length > 0) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error("no session ever waited for the lock");
}
