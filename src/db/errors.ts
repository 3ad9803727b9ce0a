/**
 * What a database error means for the caller: PostgreSQL out of reach (answer 503, retry later),
 * a transient conflict worth another try, or anything else (a bug or data PostgreSQL refuses:
 * retrying the same thing gives the same error).
 */

const CONNECTION_ERROR_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOTFOUND",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "EPIPE",
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now
  "53300", // too_many_connections
]);

const CONNECTION_MESSAGES = [
  /connection terminated/i,
  /timeout exceeded when trying to connect/i,
  /connection refused/i,
  /database system is (starting up|shutting down|in recovery mode)/i,
  /Client has encountered a connection error/i,
  /Connection ended unexpectedly/i,
  /Cannot use a pool after calling end/i,
];

/** serialization_failure, deadlock_detected, lock_not_available, query_canceled (statement timeout). */
const RETRYABLE_CODES = new Set(["40001", "40P01", "55P03", "57014"]);

function* chain(err: unknown): Generator<{ code?: unknown; message?: unknown; name?: unknown }> {
  const seen = new Set<unknown>();
  let current: unknown = err;
  while (current && typeof current === "object" && !seen.has(current)) {
    seen.add(current);
    yield current as { code?: unknown; message?: unknown; name?: unknown };
    current = (current as { cause?: unknown }).cause;
  }
}

/** True when the error means PostgreSQL cannot be reached (answer 503, Orange retries later). */
export function isDatabaseUnavailable(err: unknown): boolean {
  for (const e of chain(err)) {
    if (typeof e.code === "string" && (CONNECTION_ERROR_CODES.has(e.code) || e.code.startsWith("08"))) return true;
    if (typeof e.message === "string" && CONNECTION_MESSAGES.some((re) => re.test(e.message as string))) return true;
  }
  return false;
}

/** True when the same work may well succeed if tried again: the database is out of reach, or a conflict. */
export function isTransient(err: unknown): boolean {
  if (isDatabaseUnavailable(err)) return true;
  for (const e of chain(err)) {
    if (typeof e.code === "string" && RETRYABLE_CODES.has(e.code)) return true;
    if (e.name === "TransactionTimeout") return true;
  }
  return false;
}
