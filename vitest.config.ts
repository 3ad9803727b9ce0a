import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
    pool: "forks",
    // One embedded PostgreSQL for the run; each test file gets its own database cloned from a
    // migrated template (test/support/db.ts).
    globalSetup: ["test/support/global-setup.ts"],
    // No test can reach another machine (a real Orange host, say): test/support/network-guard.ts.
    setupFiles: ["test/support/network-guard.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
