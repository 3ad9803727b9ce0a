/**
 * `${…}` templating of scenario values (FORMAT.md, "Templates").
 *
 * A string that is exactly one `${name}` is replaced by the value itself, keeping its JSON type
 * (so `userServiceQuantity: "${count}"` stays a number); elsewhere values are inserted as text.
 * A name that resolves to nothing throws MissingVariable, which the runner reports as a skipped
 * step (usually because the step that should have produced it failed).
 */
import { randomUUID } from "node:crypto";
import { resolvePath } from "./match.js";

export class MissingVariable extends Error {
  constructor(readonly variable: string) {
    super(`missing variable \${${variable}}`);
    this.name = "MissingVariable";
  }
}

/** Names resolved against the context (vars, saved values, step results, run, offer…). */
export type TemplateContext = Record<string, unknown>;

const WHOLE = /^\$\{([^{}]+)\}$/;
const ANY = /\$\{([^{}]+)\}/g;

/** The value of one name; `uuid` and `now` are fresh at each use unless the context defines them. */
export function lookup(name: string, ctx: TemplateContext): unknown {
  const trimmed = name.trim();
  if (!Object.prototype.hasOwnProperty.call(ctx, trimmed.split(".")[0] ?? "")) {
    if (trimmed === "uuid") return randomUUID();
    if (trimmed === "now") return new Date().toISOString();
  }
  const { found, value } = resolvePath(ctx, trimmed);
  if (!found) throw new MissingVariable(trimmed);
  return value;
}

function asText(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function templateString(text: string, ctx: TemplateContext): unknown {
  const whole = WHOLE.exec(text);
  if (whole) return lookup(whole[1] ?? "", ctx);
  return text.replace(ANY, (_all, name: string) => asText(lookup(name, ctx)));
}

/** Templates every string (and object key, as text) in a JSON-like value. */
export function template<T = unknown>(value: T, ctx: TemplateContext): T {
  return templateAny(value, ctx) as T;
}

function templateAny(value: unknown, ctx: TemplateContext): unknown {
  if (typeof value === "string") return templateString(value, ctx);
  if (Array.isArray(value)) return value.map((v) => templateAny(v, ctx));
  if (typeof value === "object" && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[asText(templateString(k, ctx))] = templateAny(v, ctx);
    return out;
  }
  return value;
}
