import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it, inject } from "vitest";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { uc2Request } from "./support/examples.js";
import { withDatabase } from "./support/global-setup.js";
import { read, ROOT } from "./support/markdown.js";
import { gatewayEnv, startServerProcess, type ServerProcess } from "./support/server-process.js";

/**
 * The README's two database roles (section "Database roles"), run as printed: an owner applies
 * the migrations with `npm run migrate`, and the server runs with MIGRATE_ON_START=false and an
 * application role that reads and writes rows and nothing else. Names and passwords are made
 * unique here: roles belong to the whole PostgreSQL server, which the test files share.
 */

const suffix = randomBytes(4).toString("hex");
const NAMES: Record<string, string> = {
  orange_owner: `roles_owner_${suffix}`,
  orange_app: `roles_app_${suffix}`,
  orange_partner: `roles_db_${suffix}`,
  "change-me-owner": `owner-${suffix}`,
  "change-me-app": `app-${suffix}`,
};

/** A `<!-- db-roles: NAME -->` SQL block of the README, with this test's names. */
function readmeSql(name: string): string {
  const found = new RegExp(`<!--\\s*db-roles:\\s*${name}\\s*-->\\n\`\`\`sql\\n([\\s\\S]*?)\\n\`\`\``).exec(read("README.md"));
  if (!found) throw new Error(`README.md has no <!-- db-roles: ${name} --> SQL block`);
  return found[1]!.replace(/orange_owner|orange_app|orange_partner|change-me-owner|change-me-app/g, (w) => NAMES[w]!);
}

function urlAs(role: "orange_owner" | "orange_app" | "admin", database = NAMES.orange_partner!): string {
  const url = new URL(withDatabase(inject("pgAdminUrl"), database));
  if (role !== "admin") {
    url.username = NAMES[role]!;
    url.password = NAMES[role === "orange_owner" ? "change-me-owner" : "change-me-app"]!;
  }
  return url.toString();
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** `npm run migrate` as an operator runs it: its exit code and output. */
async function npmRunMigrate(databaseUrl: string): Promise<{ code: number | null; output: string }> {
  const child = spawn("npm", ["run", "--silent", "migrate"], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, DATABASE_URL: databaseUrl },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (c: string) => (output += c));
  child.stderr.setEncoding("utf8").on("data", (c: string) => (output += c));
  const [code] = await once(child, "exit");
  return { code: code as number | null, output };
}

/** The SQLSTATE of a statement run as the application role, or "ok". */
async function asApp(statement: string): Promise<string> {
  return withClient(urlAs("orange_app"), async (client) => {
    try {
      await client.query(statement);
      return "ok";
    } catch (err) {
      return String((err as { code?: string }).code);
    }
  });
}

describe("the server with a least-privilege database role (README, Database roles)", () => {
  let gateway: MockGateway;
  let server: ServerProcess | undefined;

  beforeAll(async () => {
    const serverSql = readmeSql("server");
    // CREATE DATABASE cannot run inside the transaction a multi-statement query is.
    await withClient(inject("pgAdminUrl"), async (client) => {
      for (const statement of serverSql.split(";").map((s) => s.trim()).filter(Boolean)) await client.query(statement);
    });
    await withClient(urlAs("admin"), (client) => client.query(readmeSql("database")));
    gateway = await startMockGateway();
  });

  afterAll(async () => {
    await server?.stop();
    await gateway?.close();
    await withClient(inject("pgAdminUrl"), async (client) => {
      await client.query(`DROP DATABASE IF EXISTS ${NAMES.orange_partner} WITH (FORCE)`);
      await client.query(`DROP ROLE IF EXISTS ${NAMES.orange_app}`);
      await client.query(`DROP ROLE IF EXISTS ${NAMES.orange_owner}`);
    });
  });

  it("npm run migrate applies the migrations with the owner role and exits; run again, it has nothing to do", async () => {
    const first = await npmRunMigrate(urlAs("orange_owner"));
    expect(first.code, first.output).toBe(0);
    expect(first.output).toMatch(/applied \d+ migration\(s\)/);
    await withClient(urlAs("admin"), (client) => client.query(readmeSql("after-first-migration")));

    const again = await npmRunMigrate(urlAs("orange_owner"));
    expect(again.code, again.output).toBe(0);
    expect(again.output).toContain("schema up to date: nothing to apply");
    const owners = await withClient(urlAs("admin"), (client) =>
      client.query<{ schemaname: string; tableowner: string }>(
        "SELECT DISTINCT schemaname, tableowner FROM pg_tables WHERE schemaname IN ('public', 'graphile_worker')",
      ),
    );
    expect(owners.rows.map((r) => `${r.schemaname}:${r.tableowner}`).sort()).toEqual(
      [`graphile_worker:${NAMES.orange_owner}`, `public:${NAMES.orange_owner}`],
    );
  });

  it("npm run migrate without DATABASE_URL says what it needs and fails", async () => {
    const run = await npmRunMigrate("");
    expect(run.code).toBe(2);
    expect(run.output).toContain("DATABASE_URL is not set");
  });

  it("the application role reads and writes rows but cannot create, alter or drop a table, nor touch the ledger", async () => {
    expect(await asApp("SELECT count(*) FROM licence")).toBe("ok");
    expect(await asApp("SELECT count(*) FROM graphile_worker._private_jobs")).toBe("ok");
    // 42501: insufficient_privilege
    expect(await asApp("CREATE TABLE intruder (id int)")).toBe("42501");
    expect(await asApp("CREATE TABLE graphile_worker.intruder (id int)")).toBe("42501");
    expect(await asApp("CREATE SCHEMA intruder")).toBe("42501");
    expect(await asApp("ALTER TABLE licence ADD COLUMN intruder int")).toBe("42501");
    expect(await asApp("DROP TABLE outbox_event")).toBe("42501");
    expect(await asApp("CREATE INDEX intruder ON licence (id)")).toBe("42501");
    expect(await asApp("SELECT count(*) FROM _prisma_migrations")).toBe("42501");
  });

  it("a server started with that role and MIGRATE_ON_START left on stops with PostgreSQL's refusal", async () => {
    await expect(
      startServerProcess({ env: { DATABASE_URL: urlAs("orange_app"), ROLE: "api" }, startTimeoutMs: 60_000 }),
    ).rejects.toThrow(/permission denied/);
  });

  it("serves an asynchronous order (its job, its licences, its event), a consultation and a suspension with that role", async () => {
    server = await startServerProcess({
      env: { DATABASE_URL: urlAs("orange_app"), MIGRATE_ON_START: "false", ORDERING_MODE: "async", LOG_LEVEL: "info", ...gatewayEnv(gateway) },
      startTimeoutMs: 60_000,
    });
    expect(server.output()).toContain("MIGRATE_ON_START=false");
    const call = async (method: "GET" | "POST", path: string, body?: unknown) => {
      const res = await fetch(`${server!.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${server!.token}`, ...(body ? { "content-type": "application/json" } : {}) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as Record<string, never> };
    };

    const ack = await call("POST", "/productordering/v2/productOrder", uc2Request());
    if (ack.status !== 201) await new Promise((r) => setTimeout(r, 1000));
    expect(ack.status, `${JSON.stringify(ack.body)}\n${server.output().slice(-4000)}`).toBe(201);
    expect(ack.body.state).toBe("acknowledged");
    const event = await server.waitFor(
      "the order's completedStateNotification at the gateway",
      () => gateway.delivered().find((e) => (e.body as { resource: { id: string } }).resource.id === ack.body.id),
      30_000,
    );
    const done = event.body as { type: string; resource: { state: string; orderItem: { productRef: { id: string } }[] } };
    expect(done.type).toBe("completedStateNotification");
    expect(done.resource.state).toBe("completed");

    const fleet = done.resource.orderItem[0]!.productRef.id;
    const licences = await call("GET", `/userservice/v2/userService?productRefId=${fleet}`);
    expect(licences.status).toBe(200);
    expect(licences.body).toHaveLength(3);
    const licenceId = (licences.body as unknown as { id: string }[])[1]!.id;
    const suspended = await call("POST", "/userservice/v2/userService/update", {
      externalReference: { type: "orange", id: `UPD-ROLES-${suffix}` },
      userService: [{ id: licenceId, externalState: "suspended" }],
    });
    expect(suspended.status).toBe(200);
    expect(suspended.body.state).toBe("completed");

    // What the application role wrote: the order, its job done (none left), its event delivered.
    const read = () =>
      withClient(urlAs("admin"), async (client) => ({
        order: (await client.query("SELECT state FROM product_order WHERE id = $1", [ack.body.id])).rows[0]?.state,
        events: (await client.query("SELECT type, state FROM outbox_event ORDER BY seq")).rows,
        jobs: Number((await client.query("SELECT count(*) AS n FROM graphile_worker._private_jobs")).rows[0].n),
        licence: (await client.query("SELECT state FROM licence WHERE id = $1", [licenceId])).rows[0]?.state,
      }));
    // The delivery is recorded just after the gateway's answer.
    const state = await server.waitFor("the event recorded as delivered and its job gone", async () => {
      const now = await read();
      return now.jobs === 0 && now.events[0]?.state === "delivered" ? now : undefined;
    }, 30_000);
    expect(state).toEqual({
      order: "completed",
      events: [{ type: "completedStateNotification", state: "delivered" }],
      jobs: 0,
      licence: "inactive",
    });
  });
});
