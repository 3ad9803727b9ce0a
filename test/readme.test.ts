import { spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../src/simulator/self-host.js";
import { examples, markdownFiles, read, readmeBlocks, ROOT, section, type CommandBlock } from "./support/markdown.js";

/**
 * The README's "Your first order in 60 seconds", run as a newcomer would: `npm start` (the top
 * command, on a free port and a data folder of its own), then every shell block of the section,
 * as printed, in one bash session, the mock gateway and the asynchronous server in the
 * background. Outputs are checked: the order completed, the fleet's licences, the suspension,
 * the acknowledgements and the events the gateway printed. Also: every `npm run X` the
 * Markdown shows is a script of package.json.
 */

const README = read("README.md");
const SECTION = section(README, "Your first order in 60 seconds");
const BLOCKS = readmeBlocks(SECTION);
const PACKAGE = JSON.parse(read("package.json")) as { scripts: Record<string, string>; bin: Record<string, string> };

const PARTNER_ID = (prefix: string) => new RegExp(`^${prefix}_[0-9a-z]{20}$`);

describe("the commands the Markdown shows", () => {
  it("are scripts of package.json", () => {
    const missing: string[] = [];
    let found = 0;
    for (const file of markdownFiles()) {
      for (const m of read(file).matchAll(/\bnpm (run ([a-z][\w:-]*)|start|test)\b/g)) {
        found++;
        const script = m[2] ?? m[1]!;
        if (!(script in PACKAGE.scripts)) missing.push(`${file}: npm ${m[1]}`);
      }
      for (const m of read(file).matchAll(/\bnpx (orange-[\w-]+)/g)) {
        if (!(m[1]! in PACKAGE.bin)) missing.push(`${file}: npx ${m[1]}`);
      }
    }
    expect(missing).toEqual([]);
    expect(found).toBeGreaterThan(10);
  });

  it("marks every shell block of the first-order section for this test, and the order's body is the UC2 example of the contract", () => {
    expect(BLOCKS.length).toBeGreaterThan(0);
    expect(BLOCKS.length).toBe([...SECTION.matchAll(/^```sh$/gm)].length);
    expect(BLOCKS.map((b) => b.name)).toEqual(Object.keys(STEPS));
    const order = BLOCKS.find((b) => b.name === "order")!.code;
    const body = /-d '\n([\s\S]*?)'\)/.exec(order)?.[1];
    const uc2 = examples("docs/orange-contract.md").find((e) => e.name === "uc2-request");
    expect(JSON.parse(body ?? "null")).toEqual(uc2?.value);
  });
});

// -------------------------------------------------------------------------------------------------
// Processes

/** A command of the README run in the background in a process group of its own, like a terminal tab. */
class Background {
  readonly child: ChildProcess;
  output = "";
  private readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    script: string,
    env: NodeJS.ProcessEnv,
  ) {
    this.child = spawn("bash", ["--noprofile", "--norc", "-c", script], { cwd: ROOT, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    const keep = (chunk: Buffer) => (this.output += chunk.toString("utf8"));
    this.child.stdout!.on("data", keep);
    this.child.stderr!.on("data", keep);
    this.exited = new Promise((resolve) => this.child.once("exit", () => resolve()));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async until(what: string, probe: () => boolean | Promise<boolean>, timeoutMs = 180_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await probe())) {
      if (!this.running) throw new Error(`${this.name} exited before ${what}:\n${this.output.slice(-5000)}`);
      if (Date.now() > deadline) throw new Error(`${this.name}: no ${what} within ${timeoutMs} ms:\n${this.output.slice(-5000)}`);
      await delay(100);
    }
  }

  /** Ctrl-C in its terminal (SIGINT to its process group), then waits until every process of the group is gone. */
  async stop(signal: NodeJS.Signals = "SIGINT"): Promise<void> {
    const group = this.child.pid!;
    const alive = () => {
      try {
        process.kill(-group, 0);
        return true;
      } catch {
        return false;
      }
    };
    if (alive()) process.kill(-group, signal);
    const deadline = Date.now() + 60_000;
    while (alive() && Date.now() < deadline) await delay(100);
    if (alive()) process.kill(-group, "SIGKILL");
    await this.exited;
  }
}

/** One bash session fed the README's blocks one after the other: variables carry over, as in a terminal. */
class Session {
  private readonly child: ChildProcess;
  private stdout = "";
  private stderr = "";
  private count = 0;

  constructor(env: NodeJS.ProcessEnv) {
    this.child = spawn("bash", ["--noprofile", "--norc"], { cwd: ROOT, env, stdio: ["pipe", "pipe", "pipe"] });
    this.child.stdout!.on("data", (chunk: Buffer) => (this.stdout += chunk.toString("utf8")));
    this.child.stderr!.on("data", (chunk: Buffer) => (this.stderr += chunk.toString("utf8")));
  }

  async run(code: string, timeoutMs = 60_000): Promise<{ stdout: string; stderr: string; status: number }> {
    const marker = `__readme_block_${++this.count}__`;
    this.stdout = "";
    this.stderr = "";
    this.child.stdin!.write(`${code}\nprintf '\\n${marker} %d\\n' "$?"\nprintf '${marker}\\n' >&2\n`);
    const done = new RegExp(`\\n${marker} (\\d+)\\n`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = done.exec(this.stdout);
      if (m && this.stderr.includes(`${marker}\n`)) {
        return {
          stdout: this.stdout.slice(0, m.index),
          stderr: this.stderr.slice(0, this.stderr.indexOf(`${marker}\n`)),
          status: Number(m[1]),
        };
      }
      if (this.child.exitCode !== null) throw new Error(`bash exited (${this.child.exitCode}): ${this.stdout}${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`the block did not finish within ${timeoutMs} ms:\n${code}\n${this.stdout}${this.stderr}`);
      await delay(50);
    }
  }

  close(): void {
    this.child.stdin!.end();
  }
}

interface GatewayEvent {
  status: number;
  path: string;
  body: { id: string; type: string; time: string; resource: Record<string, unknown> };
}

/** The events the `--gateway-only` mock printed: a header line, then the body as indented JSON. */
function printedEvents(output: string): GatewayEvent[] {
  const events: GatewayEvent[] = [];
  for (const m of output.matchAll(/^(\d{3}) POST (\S+) \S+ \S+\n(\{\n[\s\S]*?\n\})$/gm)) {
    events.push({ status: Number(m[1]), path: m[2]!, body: JSON.parse(m[3]!) as GatewayEvent["body"] });
  }
  return events;
}

// -------------------------------------------------------------------------------------------------
// The section, block by block

interface Context {
  env: NodeJS.ProcessEnv;
  base: string;
  session: Session;
  server: Background;
  gateway?: Background;
  /** What the blocks produced, for the later checks. */
  fleet?: string;
  licences?: { id: string; state: string }[];
  orderId?: string;
}

type Output = { stdout: string; stderr: string; status: number };

interface Step {
  /** `run`: in the bash session; `background`: a long-running command of its own terminal. */
  kind: "run" | "background";
  check(ctx: Context, out: Output, block: CommandBlock): Promise<void> | void;
}

const json = (out: Output) => {
  expect(out.status, out.stderr).toBe(0);
  expect(out.stderr).toBe("");
  return JSON.parse(out.stdout) as Record<string, unknown>;
};

async function pingOk(base: string): Promise<boolean> {
  try {
    return (await fetch(`${base}/ping`)).status === 200;
  } catch {
    return false;
  }
}

async function eventAtGateway(ctx: Context, what: string, pick: (e: GatewayEvent) => boolean): Promise<GatewayEvent> {
  let found: GatewayEvent | undefined;
  await ctx.gateway!.until(what, () => (found = printedEvents(ctx.gateway!.output).find(pick)) !== undefined, 60_000);
  return found!;
}

const STEPS: Record<string, Step> = {
  token: {
    kind: "run",
    check: (_ctx, out) => {
      expect(out).toEqual({ stdout: "", stderr: "", status: 0 });
    },
  },
  order: {
    kind: "run",
    check: (ctx, out) => {
      const order = json(out);
      expect(order).toMatchObject({ state: "completed", externalReference: { type: "orange", id: "ORD-2026-000102" } });
      expect(order.id).toMatch(PARTNER_ID("po"));
      const item = (order.orderItem as { state: string; productRef: { id: string; userServiceQuantity: number }; endUserConfiguration: { endUser: { id: string } }[] }[])[0]!;
      expect(item.state).toBe("completed");
      expect(item.productRef.userServiceQuantity).toBe(3);
      expect(item.productRef.id).toMatch(PARTNER_ID("fl"));
      expect(item.endUserConfiguration[0]!.endUser.id).toMatch(PARTNER_ID("eu"));
      ctx.fleet = item.productRef.id;
    },
  },
  list: {
    kind: "run",
    check: (ctx, out) => {
      const list = json(out) as unknown as { id: string; state: string; relatedProductRefId: string; endUser?: { givenName: string } }[];
      expect(list).toHaveLength(3);
      expect(list.every((l) => l.state === "active" && l.relatedProductRefId === ctx.fleet && PARTNER_ID("us").test(l.id))).toBe(true);
      expect(list[0]!.endUser?.givenName).toBe("Paul");
      ctx.licences = list;
    },
  },
  suspend: {
    kind: "run",
    check: (ctx, out) => {
      const update = json(out);
      expect(update).toMatchObject({
        externalReference: { type: "orange", id: "UPD-2026-004411" },
        state: "completed",
        userService: [{ id: ctx.licences![1]!.id, state: "inactive", externalState: "suspended", relatedProductRefId: ctx.fleet }],
      });
      expect(update.userService).toHaveLength(1);
    },
  },
  gateway: {
    kind: "background",
    check: async (ctx, _out, block) => {
      ctx.gateway = new Background("the mock gateway", block.code, ctx.env);
      await ctx.gateway.until("ready line", () => ctx.gateway!.output.includes("waiting for events"));
      expect(ctx.gateway.output).toContain(`on http://127.0.0.1:${ctx.env.GATEWAY_PORT}`);
    },
  },
  "async-server": {
    kind: "background",
    check: async (ctx, _out, block) => {
      // "Stop the server (Ctrl-C in its terminal)".
      await ctx.server.stop("SIGINT");
      expect(await pingOk(ctx.base)).toBe(false);
      ctx.server = new Background("the asynchronous server", block.code, ctx.env);
      await ctx.server.until("GET /ping answering 200", () => pingOk(ctx.base));
      await ctx.server.until("the worker started", () => ctx.server.output.includes("delivering events to Orange"));
    },
  },
  "async-order": {
    kind: "run",
    check: async (ctx, out) => {
      const ack = json(out);
      expect(ack).toMatchObject({ state: "acknowledged", orderItem: [{ state: "acknowledged", productRef: { id: ctx.fleet, userServiceQuantity: 2 } }] });
      expect(ack.id).toMatch(PARTNER_ID("po"));
      const event = await eventAtGateway(ctx, "completedStateNotification", (e) => e.body.resource.id === ack.id);
      expect(event.status).toBe(201);
      expect(event.path).toBe("/mba2/productordering/v2/event");
      expect(event.body.type).toBe("completedStateNotification");
      expect(event.body.id).toMatch(PARTNER_ID("ev"));
      expect(event.body.resource).toMatchObject({
        state: "completed",
        externalReference: { type: "orange", id: "ORD-2026-000187" },
        orderItem: [{ state: "completed", productRef: { id: ctx.fleet, userServiceQuantity: 2 } }],
      });
    },
  },
  "async-reactivate": {
    kind: "run",
    check: async (ctx, out) => {
      expect(json(out)).toEqual({ externalReference: { type: "orange", id: "UPD-2026-004412" }, state: "acknowledged" });
      const licence = ctx.licences![1]!.id;
      const event = await eventAtGateway(
        ctx,
        "updateNotification",
        (e) => e.body.type === "updateNotification" && (e.body.resource.externalReference as { id: string } | undefined)?.id === "UPD-2026-004412",
      );
      expect(event.status).toBe(201);
      expect(event.path).toBe("/mba2/userservice/v2/event");
      expect(event.body.resource).toMatchObject({ state: "completed", userService: [{ id: licence, state: "active", externalState: "active" }] });
    },
  },
  summary: {
    kind: "run",
    check: (ctx, out) => {
      expect(out.status, out.stderr).toBe(0);
      expect(out.stderr).toBe("");
      const lines = out.stdout.trim().split("\n");
      expect(lines).toHaveLength(5);
      const ids = lines.map((line) => {
        const [id, state] = line.split(" ");
        expect(state, line).toBe("active");
        expect(id).toMatch(PARTNER_ID("us"));
        return id;
      });
      expect(ids.slice(0, 3)).toEqual(ctx.licences!.map((l) => l.id));
    },
  },
};

describe("Your first order in 60 seconds", () => {
  let dataDir: string;
  let ctx: Context | undefined;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "readme-test-"));
    // As root, the embedded PostgreSQL runs as its own system user, which must reach its data.
    await chmod(dataDir, 0o755);
  });
  afterAll(async () => {
    ctx?.session.close();
    await ctx?.gateway?.stop("SIGTERM");
    await ctx?.server.stop("SIGTERM");
    await rm(dataDir, { recursive: true, force: true });
  }, 180_000);

  it("runs every block of the section as printed against a real server and gets what the README says", async () => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const env: NodeJS.ProcessEnv = {
      PATH: `${dirname(process.execPath)}:${process.env.PATH ?? "/usr/bin:/bin"}`,
      HOME: process.env.HOME ?? dataDir,
      LANG: "C.UTF-8",
      // The server's own settings, as a newcomer's shell would have none: its port and data.
      HOST: "127.0.0.1",
      PORT: String(port),
      DATA_DIR: dataDir,
      EMBEDDED_PG_PORT: String(await freePort()),
      DATABASE_URL: "",
      // What the README's commands read, with localhost:8080 and 8090 as defaults.
      BASE: base,
      GATEWAY_PORT: String(await freePort()),
    };
    // The top of the README: `npm start`, on an empty data folder.
    const server = new Background("npm start", "npm start", env);
    ctx = { env, base, session: new Session(env), server };
    await server.until("GET /ping answering 200", () => pingOk(base));

    for (const block of BLOCKS) {
      const step = STEPS[block.name]!;
      const out = step.kind === "run" ? await ctx.session.run(block.code) : { stdout: "", stderr: "", status: 0 };
      try {
        await step.check(ctx, out, block);
      } catch (err) {
        throw new Error(`README block "${block.name}":\n${block.code}\n--- stdout\n${out.stdout}\n--- stderr\n${out.stderr}\n${String(err)}`, { cause: err });
      }
    }
  }, 420_000);
});
