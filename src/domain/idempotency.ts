import { Conflict } from "../errors.js";
import type { JsonValue } from "../lib/json.js";
import type { StoredRequest } from "./requests.dal.js";

/**
 * Orange resent a request under a key already used (contract section 8): the same body gets the
 * stored answer, another body is a conflict.
 */
export function replayOrConflict(
  kind: "order" | "update",
  stored: StoredRequest | undefined,
  cmd: { idempotencyKey?: string; requestHash: string },
): JsonValue {
  if (!stored) throw new Error(`idempotency key conflict without a stored ${kind}`);
  if (stored.request_hash !== cmd.requestHash) {
    throw new Conflict(
      `${kind} reference ${JSON.stringify(cmd.idempotencyKey)} was already used by ${kind} ${stored.id} with a different body`,
    );
  }
  return stored.response;
}
