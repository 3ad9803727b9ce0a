/**
 * Paths and matchers of the scenario format (FORMAT.md, "Paths" and "Matchers").
 *
 * Pure functions: the runner feeds them parsed JSON and turns each MatchResult into one check
 * line, so `expected` and `actual` are short human-readable texts, never raw values.
 */
import { isDeepStrictEqual } from "node:util";

export interface MatchResult {
  ok: boolean;
  expected: string;
  actual: string;
}

/** What a matcher needs beyond the value: the Orange references sent during the run. */
export interface MatchContext {
  orangeRefs: ReadonlySet<string>;
}

export interface Resolved {
  found: boolean;
  value: unknown;
}

const ISO_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const MAX_TEXT = 200;

/** `a.b.0.c`, `a[0].c`, `$`, `$.a`, `` → segments (empty for the root). */
export function parsePath(path: string): string[] {
  const normalized = path.trim().replace(/\[(\d+|\*)\]/g, ".$1");
  const withoutRoot = normalized === "$" ? "" : normalized.startsWith("$.") ? normalized.slice(2) : normalized;
  return withoutRoot === "" ? [] : withoutRoot.split(".");
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function resolveSegments(value: unknown, segments: readonly string[]): Resolved {
  if (segments.length === 0) return { found: true, value };
  const [head, ...rest] = segments as [string, ...string[]];
  if (head === "*") {
    // `*` maps the rest of the path over an array; elements where it is absent are left out.
    if (!Array.isArray(value)) return { found: false, value: undefined };
    const values = value.map((item) => resolveSegments(item, rest)).filter((r) => r.found).map((r) => r.value);
    return { found: true, value: values };
  }
  if (Array.isArray(value)) {
    if (!/^\d+$/.test(head)) return { found: false, value: undefined };
    const index = Number(head);
    return index < value.length ? resolveSegments(value[index], rest) : { found: false, value: undefined };
  }
  if (isRecord(value) && Object.prototype.hasOwnProperty.call(value, head) && value[head] !== undefined) {
    return resolveSegments(value[head], rest);
  }
  return { found: false, value: undefined };
}

/** The value at `path` in `root`, and whether it is there at all. */
export function resolvePath(root: unknown, path: string): Resolved {
  return resolveSegments(root, parsePath(path));
}

/** A short one-line text for a value, for check lines. */
export function describeValue(value: unknown, present = true): string {
  if (!present) return "(absent)";
  if (value === undefined) return "(nothing)";
  let text: string;
  try {
    text = typeof value === "string" ? JSON.stringify(value) : (JSON.stringify(value) ?? String(value));
  } catch {
    text = String(value);
  }
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT - 1)}…` : text;
}

/** Paths of empty nodes (`{}`, `[]`, null) anywhere in a JSON value (contract section 0). */
export function findEmptyNodes(value: unknown, path = "$"): string[] {
  if (value === null) return [path];
  if (Array.isArray(value)) {
    if (value.length === 0) return [path];
    return value.flatMap((v, i) => findEmptyNodes(v, `${path}[${i}]`));
  }
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0) return [path];
    return entries.flatMap(([k, v]) => (v === undefined ? [`${path}.${k}`] : findEmptyNodes(v, `${path}.${k}`)));
  }
  return [];
}

/** An object with `$` keys is an operator matcher; any other object matches partially. */
export function isOperator(matcher: unknown): matcher is Record<string, unknown> {
  return isRecord(matcher) && Object.keys(matcher).some((k) => k.startsWith("$"));
}

interface Mismatch {
  /** Where inside the value (relative path), empty at the top. */
  where: string;
  expected: string;
  actual: string;
}

const join = (where: string, key: string | number): string => (where === "" ? String(key) : `${where}.${key}`);

function mismatch(where: string, expected: string, actual: unknown, present: boolean): Mismatch {
  return { where, expected, actual: describeValue(actual, present) };
}

/** Runs one operator; null when it passes. */
function runOperator(op: string, arg: unknown, actual: unknown, present: boolean, ctx: MatchContext, where: string): Mismatch | null {
  const fail = (expected: string) => mismatch(where, expected, actual, present);
  switch (op) {
    case "$equals":
      return present && isDeepStrictEqual(actual, arg) ? null : fail(`exactly ${describeValue(arg)}`);
    case "$exists":
      return present === Boolean(arg) ? null : fail(arg ? "present" : "absent");
    case "$partnerId": {
      const ok = typeof actual === "string" && actual.length > 0 && !ctx.orangeRefs.has(actual);
      if (ok === Boolean(arg)) return null;
      return fail(arg ? "a partner id (non-empty string, not one of Orange's references)" : "not a partner id");
    }
    case "$length": {
      const length = typeof actual === "string" || Array.isArray(actual) ? actual.length : undefined;
      if (length === arg) return null;
      const m = fail(`length ${describeValue(arg)}`);
      return length === undefined ? m : { ...m, actual: `length ${length}: ${m.actual}` };
    }
    case "$oneOf": {
      const options = Array.isArray(arg) ? arg : [arg];
      return options.some((o) => match(o, actual, present, ctx, where) === null) ? null : fail(`one of ${describeValue(options)}`);
    }
    case "$regex": {
      let re: RegExp;
      try {
        re = new RegExp(String(arg));
      } catch {
        return fail(`a valid $regex (${String(arg)} is not)`);
      }
      return typeof actual === "string" && re.test(actual) ? null : fail(`a string matching /${String(arg)}/`);
    }
    case "$contains": {
      if (typeof actual === "string") {
        return typeof arg === "string" && actual.includes(arg) ? null : fail(`a string containing ${describeValue(arg)}`);
      }
      if (Array.isArray(actual) && actual.some((item) => match(arg, item, true, ctx, "") === null)) return null;
      return fail(`a string or an array containing ${describeValue(arg)}`);
    }
    case "$each": {
      if (!Array.isArray(actual)) return fail(`an array, each element ${describeValue(arg)}`);
      for (const [i, item] of actual.entries()) {
        const m = match(arg, item, true, ctx, join(where, i));
        if (m !== null) return m;
      }
      return null;
    }
    case "$gte":
    case "$lte": {
      const ok = typeof actual === "number" && typeof arg === "number" && (op === "$gte" ? actual >= arg : actual <= arg);
      return ok ? null : fail(`a number ${op === "$gte" ? ">=" : "<="} ${describeValue(arg)}`);
    }
    case "$date": {
      const ok = typeof actual === "string" && ISO_MS.test(actual) && !Number.isNaN(Date.parse(actual));
      return ok === Boolean(arg) ? null : fail(arg ? "an ISO 8601 UTC date-time with milliseconds" : "not a date-time");
    }
    case "$not":
      return match(arg, actual, present, ctx, where) === null ? fail(`not ${describeValue(arg)}`) : null;
    default:
      return fail(`a known matcher (${op} is not one)`);
  }
}

/** The core: null when `actual` (present or not) satisfies `matcher`, else the first mismatch. */
function match(matcher: unknown, actual: unknown, present: boolean, ctx: MatchContext, where: string): Mismatch | null {
  if (isOperator(matcher)) {
    // Several operators in one object must all pass, e.g. { $gte: 1, $lte: 5 }.
    for (const [op, arg] of Object.entries(matcher)) {
      const m = runOperator(op, arg, actual, present, ctx, where);
      if (m !== null) return m;
    }
    return null;
  }
  if (isRecord(matcher)) {
    if (!present || !isRecord(actual)) return mismatch(where, `an object with ${describeValue(matcher)}`, actual, present);
    for (const [key, sub] of Object.entries(matcher)) {
      const has = Object.prototype.hasOwnProperty.call(actual, key) && actual[key] !== undefined;
      const m = match(sub, actual[key], has, ctx, join(where, key));
      if (m !== null) return m;
    }
    return null;
  }
  if (Array.isArray(matcher)) {
    if (!present || !Array.isArray(actual)) return mismatch(where, `an array ${describeValue(matcher)}`, actual, present);
    if (actual.length !== matcher.length) {
      return { where, expected: `an array of ${matcher.length} element(s)`, actual: `${actual.length}: ${describeValue(actual)}` };
    }
    for (const [i, sub] of matcher.entries()) {
      const m = match(sub, actual[i], true, ctx, join(where, i));
      if (m !== null) return m;
    }
    return null;
  }
  return present && isDeepStrictEqual(actual, matcher) ? null : mismatch(where, describeValue(matcher), actual, present);
}

/** Matches a value (absent when `present` is false) against a matcher of the format. */
export function matchValue(matcher: unknown, actual: unknown, present: boolean, ctx: MatchContext): MatchResult {
  const m = match(matcher, actual, present, ctx, "");
  if (m === null) return { ok: true, expected: describeValue(matcher), actual: describeValue(actual, present) };
  const prefix = m.where === "" ? "" : `at ${m.where}: `;
  return { ok: false, expected: `${prefix}${m.expected}`, actual: `${prefix}${m.actual}` };
}

/** Matches the value at `path` in `root`. */
export function matchPath(root: unknown, path: string, matcher: unknown, ctx: MatchContext): MatchResult {
  const { found, value } = resolvePath(root, path);
  return matchValue(matcher, value, found, ctx);
}
