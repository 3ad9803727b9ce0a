import type { FastifySchemaCompiler } from "fastify";
import type { z } from "zod";
import { AppError, InvalidBodyField, InvalidQuery, InvalidUrl, MissingBody, MissingBodyField } from "../errors.js";

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
  const text = JSON.stringify(value);
  if (text === undefined) return String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
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
      if (issue.origin === "string") return `must be at most ${max} characters long`;
      return `must be ${issue.inclusive ? "<=" : "<"} ${max} (got ${show(issue.input)})`;
    }
    case "invalid_value":
      return `must be one of ${issue.values.map((v) => show(v)).join(", ")} (got ${show(issue.input)})`;
    case "invalid_format":
      return issue.format === "datetime"
        ? `must be an ISO 8601 date-time such as 2026-05-02T09:15:02.345Z (got ${show(issue.input)})`
        : `must be a valid ${issue.format} (got ${show(issue.input)})`;
    case "invalid_union":
      return `does not match any allowed form (got ${show(issue.input)})`;
    default:
      return issue.message;
  }
}

function isMissing(issue: Issue): boolean {
  return issue.code === "invalid_type" && issue.input === undefined;
}

export function describeIssues(issues: readonly Issue[], subject: string): { missing: boolean; description: string } {
  const leaves = issues.flatMap((i) => leafIssues(i));
  const described = leaves.slice(0, MAX_DESCRIBED).map(({ path, issue }) => {
    const where = path.length > 0 ? formatPath(path) : subject;
    return isMissing(issue) ? `${where} is required` : `${where} ${rule(issue)}`;
  });
  if (leaves.length > MAX_DESCRIBED) described.push(`and ${leaves.length - MAX_DESCRIBED} more`);
  return { missing: leaves.length > 0 && isMissing(leaves[0]!.issue), description: described.join("; ") };
}

export function validationError(httpPart: string | undefined, issues: readonly Issue[], data: unknown): AppError {
  if (httpPart === "body") {
    if (data === undefined || data === null) return new MissingBody("a JSON body is required");
    const { missing, description } = describeIssues(issues, "body");
    return missing ? new MissingBodyField(description) : new InvalidBodyField(description);
  }
  if (httpPart === "querystring") return new InvalidQuery(describeIssues(issues, "query string").description);
  return new InvalidUrl(describeIssues(issues, "path").description);
}

/** Fastify validator compiler for zod schemas that fails with Orange's error bodies. */
export const zodValidatorCompiler: FastifySchemaCompiler<z.ZodType> = ({ schema, httpPart }) => {
  return (data) => {
    const result = schema.safeParse(data, { reportInput: true });
    if (result.success) return { value: result.data };
    return { error: validationError(httpPart, result.error.issues as Issue[], data) };
  };
};
