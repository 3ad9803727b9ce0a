import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../src/simulator/self-host.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { ROOT } from "./support/markdown.js";

/**
 * `npm run dev` prints the log for a person (pino-pretty: time, level, message on one line),
 * while the server itself keeps writing pino's JSON, which production's log collectors read
 * (test/support/server-process.ts parses it for the other tests).
 */

describe("npm run dev", () => {
  let database: TestDatabase;
  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => database?.drop());

  it("prints readable log lines, not JSON", async () => {
    const port = await freePort();
    // Its own process group: npm, the shell, tsx's watcher, the server and pino-pretty end together.
    const child = spawn("npm", ["run", "--silent", "dev"], {
      cwd: ROOT,
      detached: true,
      env: {
        PATH: process.env.PATH,
        HOME: process.env.HOME,
        DATABASE_URL: database.url,
        PORT: String(port),
        HOST: "127.0.0.1",
        INBOUND_BEARER_TOKEN: "dev-logs-token",
        LOG_LEVEL: "info",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    try {
      const deadline = Date.now() + 60_000;
      while (!output.includes("partner server listening") && Date.now() < deadline && child.exitCode === null) {
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(output, output).toContain("partner server listening");
      const line = output.split("\n").find((l) => l.includes("partner server listening"))!;
      // e.g. `[04:31:07.123] INFO: partner server listening {"address":"http://127.0.0.1:…"}`
      expect(line).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: partner server listening/);
      expect(line).toContain(`http://127.0.0.1:${port}`);
      expect(output.split("\n").filter((l) => l.startsWith('{"level"'))).toEqual([]);
    } finally {
      if (child.exitCode === null) process.kill(-child.pid!, "SIGTERM");
      await new Promise((r) => child.once("exit", r));
    }
  });
});
