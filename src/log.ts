/**
 * How errors appear in the logs. A failed query carries customer data in places pino's default
 * serializer copies verbatim: PostgreSQL puts the offending row or key
 * in `detail` ("Failing row contains (…)", "Key (orange_ref)=(…)") and the value it could not
 * take in its message (`invalid input syntax for type integer: "…"`), and Node's HTTP parser
 * errors carry the raw request bytes, credentials included. Only what identifies the failure is
 * kept: type, code, SQLSTATE, the names of the constraint, table and column, and the message
 * without SQL, parameters or quoted values.
 */

/** Fields worth keeping: codes and schema names, never row values. */
const KEPT_FIELDS = [
  "code",
  "errno",
  "syscall",
  "statusCode",
  "severity",
  "schema",
  "table",
  "column",
  "constraint",
  "routine",
] as const;

const MAX_CAUSES = 5;

/**
 * The message with what may hold customer data taken out: any quoted value after a colon, where
 * PostgreSQL puts the values it rejects (names stay: `constraint "x"`). The driver's errors carry
 * neither the statement nor its parameters (they are bound, never interpolated).
 */
export function safeErrorMessage(message: string): string {
  const text = message.trim();
  return text.replace(/: "(?:[^"\\]|\\.)*"/g, ': "…"').replace(/: '(?:[^'\\]|\\.)*'/g, ": '…'");
}

function safeStack(stack: string, head: string): string {
  const frames = stack.split("\n").filter((line) => /^\s+at /.test(line));
  return [head, ...frames].join("\n");
}

export interface SerializedError {
  type: string;
  message: string;
  stack: string;
  [field: string]: unknown;
}

function serialize(err: unknown, depth: number): SerializedError {
  if (err === null || typeof err !== "object") {
    const message = safeErrorMessage(String(err));
    return { type: typeof err, message, stack: message };
  }
  const e = err as Record<string, unknown> & { message?: unknown; stack?: unknown; name?: unknown };
  const type = err instanceof Error ? err.constructor.name : typeof e.name === "string" ? e.name : "Object";
  const message = safeErrorMessage(typeof e.message === "string" ? e.message : "");
  const head = `${type}: ${message}`;
  const out: SerializedError = { type, message, stack: typeof e.stack === "string" ? safeStack(e.stack, head) : head };
  // A plain object has no stack to show.
  if (typeof e.stack !== "string" && depth > 0) delete (out as Partial<SerializedError>).stack;
  for (const field of KEPT_FIELDS) {
    const value = e[field];
    if (typeof value === "string" || typeof value === "number") out[field] = value;
  }
  if (e.cause !== undefined && depth < MAX_CAUSES) out.cause = serialize(e.cause, depth + 1);
  return out;
}

/** pino serializer of `err`. */
export function serializeError(err: unknown): SerializedError {
  return serialize(err, 0);
}

/** Serializers of every logger of the process (main.ts, and the HTTP app's whatever logger it is given). */
export const LOG_SERIALIZERS = { err: serializeError };
