import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { startEmbeddedPostgres } from "../src/db/embedded.js";
import { freePort } from "../src/simulator/self-host.js";

const dir = mkdtempSync(join(tmpdir(), "orange-embedded-"));
chmodSync(dir, 0o755);
const dataDir = join(dir, "data");

async function sql(url: string, text: string) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text)).rows;
  } finally {
    await client.end();
  }
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("embedded PostgreSQL", () => {
  it("keeps its data across a stop and a start on the same folder", async () => {
    const first = await startEmbeddedPostgres({ dataDir, port: await freePort() });
    await sql(first.url, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')");
    await first.stop();

    const second = await startEmbeddedPostgres({ dataDir, port: await freePort() });
    try {
      expect(await sql(second.url, "SELECT v FROM kept")).toEqual([{ v: "still here" }]);
    } finally {
      await second.stop();
    }
  }, 60_000);

  it("starts after a crash left a postmaster.pid of a dead process", async () => {
    // A pid far above pid_max: no such process.
    writeFileSync(join(dataDir, "postmaster.pid"), `99999999\n${dataDir}\n0\n5432\n\n127.0.0.1\n0 0\nready\n`);
    const server = await startEmbeddedPostgres({ dataDir, port: await freePort() });
    try {
      expect(await sql(server.url, "SELECT v FROM kept")).toEqual([{ v: "still here" }]);
    } finally {
      await server.stop();
    }
  }, 60_000);
});
