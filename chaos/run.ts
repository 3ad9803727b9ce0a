// `npm run chaos`: the fault suite. Starts its own embedded PostgreSQL in a temporary folder, then,
// for each experiment, the real server (`node --import tsx src/main.ts`) as a child process on a
// database of its own, with a loopback mock of Orange's gateway behind a fault proxy (and, for the
// provisioning experiment, the reference partner application), breaks something, and checks in
// the database and in the mocks' records that nothing accepted was lost, duplicated or left stuck.
//
// Prints a table, writes chaos/results/latest.json, exits 1 when an experiment failed (a loss, a
// duplicate, an unexpected 5xx, a crash, a request or event stuck, any other broken check).
//
//   npm run chaos                       every experiment (a few minutes)
//   npm run chaos -- db-outage bad-inputs   only these (ids as printed in the table)
//
// Only 127.0.0.1 is touched. Everything started here is stopped at the end, even on failure.

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { EXPERIMENTS } from "./experiments.js";
import { Experiment, startRun, type Tally } from "./lab.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const RESULTS_FILE = path.join(ROOT, "chaos", "results", "latest.json");
/** One experiment abandoned (counted as failed, everything it started stopped) past this. */
const EXPERIMENT_TIMEOUT_MS = 4 * 60_000;

interface Outcome extends Tally {
  id: string;
  title: string;
  verdict: "pass" | "FAIL";
  seconds: number;
  /** The end of each server's output, when the experiment failed. */
  serverOutput?: string[];
}

function verdictOf(t: Tally): "pass" | "FAIL" {
  return t.lost || t.duplicated || t.unexpected5xx || t.stuck || t.crashes || t.failures.length ? "FAIL" : "pass";
}

function git(...args: string[]): string {
  try {
    return execFileSync("git", args, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "unknown";
  }
}

function renderTable(outcomes: Outcome[]): string {
  const header = ["experiment", "faults", "accepted", "lost", "duplicated", "5xx", "verdict"];
  const rows = outcomes.map((o) => [
    o.title,
    o.faults.join("; "),
    String(o.accepted),
    String(o.lost),
    String(o.duplicated),
    o.expected503 ? `${o.unexpected5xx} (+${o.expected503} expected 503)` : String(o.unexpected5xx),
    o.verdict === "pass" ? "pass" : `**FAIL**${o.crashes ? ` (${o.crashes} crash)` : ""}${o.stuck ? ` (${o.stuck} stuck)` : ""}`,
  ]);
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

async function main(): Promise<number> {
  const only = process.argv.slice(2).filter((a) => !a.startsWith("-"));
  const unknown = only.filter((id) => !EXPERIMENTS.some((e) => e.id === id));
  if (unknown.length) {
    console.error(`unknown experiment ${unknown.join(", ")}; known: ${EXPERIMENTS.map((e) => e.id).join(", ")}`);
    return 2;
  }
  const chosen = only.length ? EXPERIMENTS.filter((e) => only.includes(e.id)) : EXPERIMENTS;
  const startedAt = new Date();
  const load = os.loadavg()[0]!;
  console.log(`fault suite: ${chosen.length} experiments; starting an embedded PostgreSQL…`);
  const run = await startRun();
  const outcomes: Outcome[] = [];
  try {
    for (const spec of chosen) {
      const x = new Experiment(run, spec.id.replace(/-/g, "_"));
      const t0 = Date.now();
      process.stdout.write(`- ${spec.id}: `);
      let timer: NodeJS.Timeout | undefined;
      try {
        await x.setUp();
        await Promise.race([
          spec.run(x),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`abandoned after ${EXPERIMENT_TIMEOUT_MS / 60_000} min`)), EXPERIMENT_TIMEOUT_MS);
          }),
        ]);
      } catch (err) {
        x.fail(`the experiment broke off: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}`);
      } finally {
        clearTimeout(timer);
        await x.tearDown();
        // A database stopped by an experiment that broke off is started again for the next one.
        if (!run.pg.up) await run.pg.start();
      }
      const outcome: Outcome = { id: spec.id, title: spec.title, ...x.tally, verdict: verdictOf(x.tally), seconds: Math.round((Date.now() - t0) / 100) / 10 };
      if (outcome.verdict === "FAIL") outcome.serverOutput = x.servers.map((s) => s.output().slice(-3_000));
      outcomes.push(outcome);
      console.log(`${outcome.verdict} in ${outcome.seconds} s`);
      for (const note of outcome.notes) console.log(`    ${note}`);
      for (const failure of outcome.failures.slice(0, 10)) console.log(`    ✗ ${failure}`);
      if (outcome.failures.length > 10) console.log(`    ✗ … and ${outcome.failures.length - 10} more (see ${path.relative(ROOT, RESULTS_FILE)})`);
    }
  } finally {
    await run.close();
  }

  const cpus = os.cpus();
  const machine = `${cpus[0]?.model.trim() ?? "unknown CPU"}, ${cpus.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GB, load average ${load.toFixed(1)} at start`;
  const commit = `${git("rev-parse", "--short", "HEAD")}${git("status", "--porcelain").length > 0 ? " (with local changes)" : ""}`;
  const table = renderTable(outcomes);
  console.log(`\n${startedAt.toISOString().slice(0, 10)}, ${machine}, Node ${process.version}, commit ${commit}\n`);
  console.log(table);
  mkdirSync(path.dirname(RESULTS_FILE), { recursive: true });
  writeFileSync(
    RESULTS_FILE,
    `${JSON.stringify({ date: startedAt.toISOString(), machine, node: process.version, commit, table, experiments: outcomes }, null, 2)}\n`,
  );
  console.log(`\nwritten: ${path.relative(ROOT, RESULTS_FILE)}`);
  return outcomes.every((o) => o.verdict === "pass") ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
