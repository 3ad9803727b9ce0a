import type { FastifySchemaCompiler } from "fastify";
import type { z } from "zod";
import {
  AppError,
  InvalidBodyField,
  InvalidHeader,
  InvalidQuery,
  InvalidUrl,
  MissingBody,
  MissingBodyField,
} from "../errors.js";
import { MAX_JSON_DEPTH } from "./schemas.js";

/**
 * Turns zod issues into Orange's error bodies: code 23 for a missing field, 24 for an invalid
 * one (28 for the query string, 20 for the path), and a description that names the JSON path,
 * the rule and the value received, e.g.
 * `orderItem[0].productRef.userServiceQuantity must be >= 1 (got -2)`.
 */

type Issue = z.core.$ZodIssue & { input?: unknown };

const MAX_DESCRIBED = 5;

export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`;
    else out += out === "" ? String(key) : `.${String(key)}`;
  }
  return out;
}

function show(value: unknown): string {
  if (value === undefined) return "nothing";
  // A query parameter coerced to a number: its text is gone, and JSON would say null.
  if (typeof value === "number" && Number.isNaN(value)) return "something that is not a number";
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    return "a value too deep to show";
  }
  if (text === undefined) return String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** A path as named in a description: deep ones are cut, the start says where. */
function where(path: readonly PropertyKey[]): string {
  const text = formatPath(path);
  return text.length > 120 ? `${text.slice(0, 117)}...` : text;
}

// ---------------------------------------------------------------------------------------------
// What PostgreSQL cannot store

/** Any NUL or surrogate: most strings have none, and one test settles them. */
// eslint-disable-next-line no-control-regex -- NUL is precisely what is looked for
const SUSPECT = /[\u0000\uD800-\uDFFF]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** The rule a string breaks when PostgreSQL cannot store it (its text type holds neither), or undefined. */
function unstorableString(text: string): string | undefined {
  if (!SUSPECT.test(text)) return undefined;
  if (text.includes("\u0000")) return "must not contain the NUL character (U+0000), which cannot be stored";
  const lone = LONE_SURROGATE.exec(text);
  if (lone) {
    const unit = lone[0].charCodeAt(0).toString(16).toUpperCase();
    return `must be well-formed Unicode: it contains a lone surrogate (U+${unit}), which cannot be stored`;
  }
  return undefined;
}

/**
 * Walks a parsed request part (body, query string, path parameters, headers) for what
 * PostgreSQL cannot store, wherever it is, unknown fields and field names included: NUL and
 * lone surrogates in strings, and nesting deeper than MAX_JSON_DEPTH. It recurses at most
 * MAX_JSON_DEPTH levels, so it runs before anything else walks the body. The findings are
 * zod-like issues with a path; the walk stops after `limit` of them.
 */
export function findUnstorable(value: unknown, limit = MAX_DESCRIBED + 1): Issue[] {
  const found: Issue[] = [];
  const path: PropertyKey[] = [];
  const add = (message: string, input: unknown) =>
    found.push({ code: "custom", path: [...path], message, input } as Issue);
  const visit = (v: unknown, depth: number): void => {
    if (found.length >= limit) return;
    if (typeof v === "string") {
      const rule = unstorableString(v);
      if (rule) add(`${rule} (got ${show(v)})`, v);
      return;
    }
    if (v === null || typeof v !== "object") return;
    if (depth > MAX_JSON_DEPTH) {
      add(`is nested deeper than ${MAX_JSON_DEPTH} levels of objects and arrays`, undefined);
      return;
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length && found.length < limit; i++) {
        path.push(i);
        visit(v[i], depth + 1);
        path.pop();
      }
      return;
    }
    for (const key of Object.keys(v)) {
      if (found.length >= limit) return;
      const rule = unstorableString(key);
      if (rule) add(`has a field name that ${rule} (got ${show(key)})`, key);
      path.push(key);
      visit((v as Record<string, unknown>)[key], depth + 1);
      path.pop();
    }
  };
  visit(value, 1);
  return found;
}

const TYPE_NAMES: Record<string, string> = {
  string: "a string",
  number: "a number",
  int: "an integer",
  boolean: "a boolean",
  object: "an object",
  array: "an array",
};

/** Flattens unions to the branch that got furthest, so the description points at the real mistake. */
function leafIssues(issue: Issue, prefix: readonly PropertyKey[] = []): { path: PropertyKey[]; issue: Issue }[] {
  const path = [...prefix, ...issue.path];
  if (issue.code === "invalid_union" && issue.errors.length > 0) {
    const branches = issue.errors as Issue[][];
    const depth = (b: Issue[]) => Math.max(...b.map((i) => i.path.length));
    const best = branches.reduce((a, b) => (depth(b) > depth(a) ? b : a));
    if (depth(best) > 0) return best.flatMap((i) => leafIssues(i, path));
  }
  return [{ path, issue }];
}

function rule(issue: Issue): string {
  // A schema may phrase its own rule ("must be an integer >= 1"); the value received is added.
  if (issue.code !== "custom" && issue.message.startsWith("must ")) return `${issue.message} (got ${show(issue.input)})`;
  switch (issue.code) {
    case "invalid_type":
      return `must be ${TYPE_NAMES[issue.expected] ?? issue.expected} (got ${show(issue.input)})`;
    case "too_small": {
      const min = String(issue.minimum);
      if (issue.origin === "array" || issue.origin === "set")
        return `must have at least ${min} item${min === "1" ? "" : "s"}`;
      if (issue.origin === "string")
        return min === "1" ? `must not be empty` : `must be at least ${min} characters long`;
      return `must be ${issue.inclusive ? ">=" : ">"} ${min} (got ${show(issue.input)})`;
    }
    case "too_big": {
      const max = String(issue.maximum);
      if (issue.origin === "array" || issue.origin === "set") return `must have at most ${max} item${max === "1" ? "" : "s"}`;
      if (issue.origin === "string") {
        return typeof issue.input === "string"
          ? `must be at most ${max} characters long (got ${issue.input.length})`
          : `must be at most ${max} characters long`;
      }
      return `must be ${issue.inclusive ? "<=" : "<"} ${max} (got ${show(issue.input)})`;
    }
    case "invalid_value":
      return `must be one of ${issue.values.map((v) => show(v)).join(", ")} (got ${show(issue.input)})`;
    case "invalid_format":
      return issue.format === "datetime"
        ? `must be an ISO 8601 date-time such as 2026-05-02T09:15:02.345Z (got ${show(issue.input)})`
        : `must be a valid ${issue.format} (got ${show(issue.input)})`;
    case "invalid_union":
      return `must be ${unionForms(issue)} (got ${show(issue.input)})`;
    default:
      return issue.message;
  }
}

/**
 * What a union accepts: the schema's own wording (`z.union([…], { error: "must be …" })`), else
 * what each branch expected, so that a description always lists the forms.
 */
function unionForms(issue: Issue & { code: "invalid_union" }): string {
  if (issue.message.startsWith("must be ")) return issue.message.slice("must be ".length);
  const forms = (issue.errors as Issue[][]).map((branch) => {
    const top = branch.find((i) => i.path.length === 0) ?? branch[0];
    if (top?.code === "invalid_type") return TYPE_NAMES[top.expected] ?? top.expected;
    if (top?.code === "invalid_value") return top.values.map((v) => show(v)).join(" or ");
    return top?.message ?? "another form";
  });
  return forms.length > 1 ? `${forms.slice(0, -1).join(", ")} or ${forms.at(-1)}` : (forms[0] ?? "another form");
}

function isMissing(issue: Issue): boolean {
  return (issue.code === "invalid_type" || issue.code === "invalid_union") && issue.input === undefined;
}

/** A missing field; a union also says what it may be. */
function required(issue: Issue): string {
  return issue.code === "invalid_union" ? `is required: ${unionForms(issue)}` : "is required";
}

/** `more`: the issues are the first ones found, not all of them (the count of the others is unknown). */
export function describeIssues(
  issues: readonly Issue[],
  subject: string,
  more = false,
): { missing: boolean; description: string } {
  const leaves = issues.flatMap((i) => leafIssues(i));
  const described = leaves.slice(0, MAX_DESCRIBED).map(({ path, issue }) => {
    const at = path.length > 0 ? where(path) : subject;
    return isMissing(issue) ? `${at} ${required(issue)}` : `${at} ${rule(issue)}`;
  });
  if (leaves.length > MAX_DESCRIBED) described.push(more ? "and more" : `and ${leaves.length - MAX_DESCRIBED} more`);
  return { missing: leaves.length > 0 && isMissing(leaves[0]!.issue), description: described.join("; ") };
}

export function validationError(
  httpPart: string | undefined,
  issues: readonly Issue[],
  data: unknown,
  more = false,
): AppError {
  if (httpPart === "body") {
    if (data === undefined || data === null) return new MissingBody("a JSON body is required");
    const { missing, description } = describeIssues(issues, "body", more);
    return missing ? new MissingBodyField(description) : new InvalidBodyField(description);
  }
  if (httpPart === "querystring") return new InvalidQuery(describeIssues(issues, "query string", more).description);
  if (httpPart === "headers") return new InvalidHeader(describeIssues(issues, "headers", more).description);
  return new InvalidUrl(describeIssues(issues, "path", more).description);
}

// ---------------------------------------------------------------------------------------------
// Bodies generated from the schema

/**
 * Tools that build a request from a schema (Swagger UI's "Example Value", Postman's import…) fill
 * every string with "string" and every open object with additionalProp1…3. Such a body may even
 * pass the schema and then fail for a confusing reason (unknown fleet "string"), so it is named
 * for what it is. Only fields where "string" is never a real value count: identifiers and types.
 */
const PLACEHOLDER_FIELDS = new Set(["id", "type", "productRefId", "relatedProductRefId", "key"]);
const PLACEHOLDER_KEY = /^additionalProp\d+$/;

/** Where a generated placeholder sits in a body (`externalReference.type is "string"`), or undefined. */
export function findPlaceholder(value: unknown): string | undefined {
  const path: PropertyKey[] = [];
  const visit = (v: unknown): string | undefined => {
    if (v === null || typeof v !== "object") return undefined;
    const entries: [PropertyKey, unknown][] = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v);
    for (const [key, child] of entries) {
      path.push(key);
      const found =
        typeof key === "string" && PLACEHOLDER_KEY.test(key)
          ? `${where(path)} is a placeholder field`
          : typeof key === "string" && PLACEHOLDER_FIELDS.has(key) && child === "string"
            ? `${where(path)} is "string"`
            : visit(child);
      path.pop();
      if (found) return found;
    }
    return undefined;
  };
  return visit(value);
}

/** The worked example to send instead, per route (the first example of each operation under /docs). */
const EXAMPLE_TO_USE: Record<string, string> = {
  "POST /productordering/v2/productOrder":
    'the example "uc2" (a first order) of this operation under /docs, or those of docs/orange-contract.md section 2',
  "POST /userservice/v2/userService/update":
    'the example "suspend" of this operation under /docs, or those of docs/orange-contract.md section 4',
  "POST /admin/v1/licence-changes":
    'the example "uc5" of this operation under /docs, or that of docs/orange-contract.md section 6 (UC5)',
};

function placeholderError(found: string, method: string, url: string): AppError {
  const instead = EXAMPLE_TO_USE[`${method} ${url}`] ?? "one of the examples of this operation under /docs";
  return new InvalidBodyField(
    `body holds the placeholders a tool generates from the schema (${found}), not a request: send ${instead}, with your own values`,
  );
}

/**
 * Fastify validator compiler for zod schemas that fails with Orange's error bodies. Every
 * request part with a schema is first walked for what PostgreSQL cannot store (findUnstorable),
 * so that every route and every field, present or future, known or not, gets that rule; a body
 * is then checked for a schema-generated placeholder (findPlaceholder), before the schema.
 */
export const zodValidatorCompiler: FastifySchemaCompiler<z.ZodType> = ({ schema, httpPart, method, url }) => {
  return (data) => {
    const unstorable = findUnstorable(data);
    if (unstorable.length > 0) {
      return { error: validationError(httpPart, unstorable, data, unstorable.length > MAX_DESCRIBED) };
    }
    if (httpPart === "body") {
      const placeholder = findPlaceholder(data);
      if (placeholder !== undefined) return { error: placeholderError(placeholder, method, url) };
    }
    const result = schema.safeParse(data, { reportInput: true });
    if (result.success) return { value: result.data };
    return { error: validationError(httpPart, result.error.issues as Issue[], data) };
  };
};
