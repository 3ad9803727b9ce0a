/**
 * Scenario files (FORMAT.md): the zod schema and the loader.
 *
 * Objects are strict so that a typo (`expcet:`, `stauts:`) is an error naming the file and the
 * field instead of a silently ignored expectation. Matchers and bodies stay `unknown`: they are
 * free JSON, interpreted by ./match.ts and ./template.ts at run time.
 */
import { readdir, readFile, stat } from "node:fs/promises";
import { extname, join } from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";

export const SCHEMA_NAMES = [
  "ProductOrderResponse",
  "UserService",
  "UserServiceList",
  "UserServiceUpdateResponse",
  "UserServiceChange",
  "ErrorBody",
  "Ping",
] as const;
export type SchemaName = (typeof SCHEMA_NAMES)[number];

const SchemaNameSchema = z.enum(SCHEMA_NAMES);
const Mode = z.enum(["sync", "async"]);
export const PROVISIONING_MODES = ["none", "webhook"] as const;
const WhenSchema = z.strictObject({ ordering: Mode.optional(), update: Mode.optional(), provisioning: z.enum(PROVISIONING_MODES).optional() });
/** path → matcher */
const PathMatchers = z.record(z.string(), z.unknown());

/** Milliseconds, or a template giving them (`"${provisioning.lateTimeoutMs}"`). */
const TimeoutSchema = z.union([z.number().int().positive(), z.string().min(1)]);

const RequestSchema = z
  .strictObject({
    method: z.enum(["GET", "POST", "PUT", "PATCH", "DELETE"]).default("GET"),
    path: z.string().min(1),
    query: z.record(z.string(), z.unknown()).optional(),
    auth: z.enum(["orange", "none", "invalid"]).default("orange"),
    headers: z.record(z.string(), z.unknown()).optional(),
    body: z.unknown().optional(),
    rawBody: z.string().optional(),
  })
  .refine((r) => r.body === undefined || r.rawBody === undefined, { message: "give body or rawBody, not both" });

const ExpectSchema = z.strictObject({
  status: z.union([z.number().int(), z.array(z.number().int()).min(1)]).optional(),
  schema: SchemaNameSchema.optional(),
  json: PathMatchers.optional(),
  noEmptyNodes: z.boolean().optional(),
  error: z.unknown().optional(),
  headers: PathMatchers.optional(),
});

const EventSchema = z.strictObject({
  api: z.enum(["productordering", "userservice"]),
  type: z.string().min(1),
  where: PathMatchers.optional(),
  timeoutMs: TimeoutSchema.optional(),
  schema: SchemaNameSchema.optional(),
  json: PathMatchers.optional(),
});

/**
 * The behaviour of the simulator's mock application (the reference partner application) from
 * this step on; numbers may be templates (`"${provisioning.pastDeadlineMs}"`).
 */
const AppBehaviourSchema = z.strictObject({
  mode: z.enum(["ok", "refuse", "later", "down", "slow"]),
  reason: z.string().min(1).optional(),
  delayMs: z.union([z.number().int().nonnegative(), z.string().min(1)]).optional(),
  laterOutcome: z.enum(["completed", "failed"]).optional(),
  refuseMentioning: z.string().min(1).optional(),
});

/** What the mock application received for a request: one record per request (see FORMAT.md). */
const ApplicationSchema = z.strictObject({
  type: z.string().min(1).optional(),
  where: PathMatchers,
  timeoutMs: TimeoutSchema.optional(),
  json: PathMatchers.optional(),
});

const StepSchema = z
  .strictObject({
    id: z.string().min(1),
    title: z.string().optional(),
    when: WhenSchema.optional(),
    request: RequestSchema.optional(),
    expect: ExpectSchema.optional(),
    event: EventSchema.optional(),
    app: AppBehaviourSchema.optional(),
    application: ApplicationSchema.optional(),
    save: z.record(z.string(), z.string()).optional(),
    waitMs: z.number().int().nonnegative().optional(),
  })
  .refine((s) => [s.request, s.event, s.waitMs, s.app, s.application].some((v) => v !== undefined), {
    message: "a step needs a request, an event, an app, an application or a waitMs",
  })
  .refine((s) => s.expect === undefined || s.request !== undefined, { message: "expect needs a request", path: ["expect"] });

export const ScenarioSchema = z
  .strictObject({
    name: z.string().min(1),
    title: z.string().optional(),
    tags: z.array(z.string()).optional(),
    when: WhenSchema.optional(),
    vars: z.record(z.string(), z.unknown()).optional(),
    steps: z.array(StepSchema).min(1),
  })
  .superRefine((scenario, ctx) => {
    const seen = new Set<string>();
    scenario.steps.forEach((step, i) => {
      if (seen.has(step.id)) ctx.addIssue({ code: "custom", message: `duplicate step id "${step.id}"`, path: ["steps", i, "id"] });
      seen.add(step.id);
    });
  });

export type Scenario = z.infer<typeof ScenarioSchema> & {
  /** The file it came from (for messages). */
  source?: string;
};
export type Step = Scenario["steps"][number];
export type StepRequest = NonNullable<Step["request"]>;
export type StepExpect = NonNullable<Step["expect"]>;
export type StepEvent = NonNullable<Step["event"]>;
export type StepApp = NonNullable<Step["app"]>;
export type StepApplication = NonNullable<Step["application"]>;
export type When = z.infer<typeof WhenSchema>;

const EXTENSIONS = new Set([".yaml", ".yml", ".json"]);

export class ScenarioError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ScenarioError";
  }
}

/** `steps.2.expect.status` from a zod issue path (prefix for files holding a list). */
function issuePath(prefix: string, path: readonly PropertyKey[]): string {
  const parts = [prefix, ...path.map(String)].filter((p) => p !== "");
  return parts.length === 0 ? "(root)" : parts.join(".");
}

/** Validates the parsed content of one file: a scenario or a list of them. */
export function parseScenarios(content: unknown, source: string): Scenario[] {
  if (content === null || content === undefined) throw new ScenarioError(`${source}: the file is empty`);
  const items = Array.isArray(content) ? content : [content];
  return items.map((item, index) => {
    const result = ScenarioSchema.safeParse(item);
    if (!result.success) {
      const prefix = Array.isArray(content) ? String(index) : "";
      const lines = result.error.issues.map((issue) => `  ${issuePath(prefix, issue.path)}: ${issue.message}`);
      throw new ScenarioError(`${source}: invalid scenario\n${lines.join("\n")}`);
    }
    return { ...result.data, source };
  });
}

async function parseFile(file: string): Promise<unknown> {
  const text = await readFile(file, "utf8");
  try {
    return extname(file).toLowerCase() === ".json" ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ScenarioError(`${file}: not valid ${extname(file).slice(1).toUpperCase()}: ${(err as Error).message}`);
  }
}

/** Files named by `paths`: files as given, directories' scenario files sorted by name. */
async function listFiles(paths: readonly string[]): Promise<string[]> {
  const files: string[] = [];
  for (const path of paths) {
    const info = await stat(path).catch(() => {
      throw new ScenarioError(`${path}: no such file or directory`);
    });
    if (info.isDirectory()) {
      const names = (await readdir(path)).filter((n) => EXTENSIONS.has(extname(n).toLowerCase())).sort();
      files.push(...names.map((n) => join(path, n)));
    } else if (EXTENSIONS.has(extname(path).toLowerCase())) {
      files.push(path);
    } else {
      throw new ScenarioError(`${path}: not a scenario file (.yaml, .yml or .json)`);
    }
  }
  return files;
}

/** Loads and validates scenario files or directories; scenario names must be unique. */
export async function loadScenarios(paths: string[]): Promise<Scenario[]> {
  const scenarios: Scenario[] = [];
  const origin = new Map<string, string>();
  for (const file of await listFiles(paths)) {
    for (const scenario of parseScenarios(await parseFile(file), file)) {
      const first = origin.get(scenario.name);
      if (first !== undefined) {
        throw new ScenarioError(`${file}: duplicate scenario name "${scenario.name}" (already in ${first})`);
      }
      origin.set(scenario.name, file);
      scenarios.push(scenario);
    }
  }
  return scenarios;
}
