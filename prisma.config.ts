import { PrismaPg } from "@prisma/adapter-pg";
import { defineConfig } from "prisma/config";

// Prisma's native engines cannot be downloaded on these machines: everything runs as
// WebAssembly/JS through the pg driver adapter (see docs/database.md).
// Prisma resolves env("DATABASE_URL") even for offline commands (generate, migrate diff); a
// placeholder keeps them working when no database is configured.
process.env.DATABASE_URL ??= "postgresql://localhost:5432/orange_partner";

export default defineConfig({
  schema: "prisma/schema.prisma",
  experimental: { adapter: true },
  engine: "js",
  adapter: async () =>
    new PrismaPg({ connectionString: process.env.DATABASE_URL ?? "postgresql://localhost/orange_partner" }),
});
