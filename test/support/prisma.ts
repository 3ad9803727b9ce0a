// The Prisma client, for the tests only: an independent reader of the store, to assert what a
// request wrote (the program itself reaches PostgreSQL through pg, src/db/sql.ts). Always through
// the pg driver adapter: Prisma runs with no native engine on these machines (docs/database.md).

import { PrismaPg } from "@prisma/adapter-pg";
import { Prisma, PrismaClient } from "../generated/prisma/client.js";

/** Tagged SQL helpers (`Prisma.raw`, `Prisma.sql`) for fragments shared between raw queries. */
export { Prisma };

export type PrismaReader = PrismaClient;

export interface CreatePrismaOptions {
  /** Connections in the pool (pg's default: 10). Keep replicas × poolMax under max_connections. */
  poolMax?: number;
  /**
   * How long a query may wait for a pooled connection, opening included (default 10 s). pg's own
   * default is forever: a saturated pool or an unreachable server would hang requests.
   */
  connectTimeoutMs?: number;
  /** An idle pooled connection broke (database restart, network); the pool replaces it. */
  onPoolError?: (error: Error) => void;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

export function createPrisma(connectionString: string, opts: CreatePrismaOptions = {}): PrismaClient {
  const adapter = new PrismaPg(
    { connectionString, max: opts.poolMax, connectionTimeoutMillis: opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS },
    { onPoolError: opts.onPoolError },
  );
  return new PrismaClient({ adapter });
}
