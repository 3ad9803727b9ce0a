import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/**
 * The worked examples of docs/orange-contract.md: each ```json block announced by
 * `<!-- example NAME (Schema) -->`. test/docs.test.ts replays them against a real server, so the
 * OpenAPI document takes its examples from here rather than keeping copies that could drift.
 */

/** The contract, beside src/ and dist/ alike. */
export const CONTRACT_FILE = fileURLToPath(new URL("../docs/orange-contract.md", import.meta.url));

export interface ContractExample {
  name: string;
  /** An export of src/orange/schemas.ts or src/admin/schemas.ts, without its `Schema` suffix. */
  schema: string;
  /** The block is an event envelope whose `resource` has `schema`. */
  event: boolean;
  value: unknown;
}

const EXAMPLE = /<!--\s*example\s+([\w-]+)\s+\((event:\s*)?(\w+)\)\s*-->\n```json\n([\s\S]*?)\n```/g;

export function parseContractExamples(markdown: string): ContractExample[] {
  return [...markdown.matchAll(EXAMPLE)].map((m) => ({
    name: m[1]!,
    event: m[2] !== undefined,
    schema: m[3]!,
    value: JSON.parse(m[4]!) as unknown,
  }));
}

/** The examples by name. */
export function readContractExamples(file = CONTRACT_FILE): Map<string, ContractExample> {
  return new Map(parseContractExamples(readFileSync(file, "utf8")).map((e) => [e.name, e]));
}
