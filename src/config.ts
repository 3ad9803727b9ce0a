import { z } from "zod";
import { parseWebhookSecrets } from "./lib/webhook-secrets.js";

/**
 * Every setting of the server, read once from the environment and validated. Defaults work on a
 * laptop (`npm start` with nothing set); secrets never have defaults. The README lists them all,
 * and .env.example carries the same list.
 */

const bool = (def: boolean) =>
  z
    .enum(["true", "false", "1", "0", "yes", "no"])
    .default(def ? "true" : "false")
    .transform((v) => v === "true" || v === "1" || v === "yes");

const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === "" ? undefined : v));

const list = z
  .string()
  .optional()
  .transform((v) =>
    (v ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s.length > 0),
  );

const EnvSchema = z.object({
  HOST: z.string().default("0.0.0.0"),
  PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  /** External PostgreSQL; when unset, an embedded PostgreSQL runs with its data in DATA_DIR. */
  DATABASE_URL: optionalString,
  DATA_DIR: z.string().default(".data"),
  EMBEDDED_PG_PORT: z.coerce.number().int().min(1).max(65535).default(54320),
  DATABASE_POOL_MAX: z.coerce.number().int().min(1).default(10),
  DATABASE_CONNECT_TIMEOUT_MS: z.coerce.number().int().min(100).default(5000),
  DATABASE_TRANSACTION_TIMEOUT_MS: z.coerce.number().int().min(1000).default(60000),
  /** Failed runs of an acknowledged (async) request, for a reason that is not transient, before it ends failed. */
  REQUEST_MAX_ATTEMPTS: z.coerce.number().int().min(1).default(5),
  /**
   * An async request of at most this many licences is carried out before it is answered
   * `acknowledged` (ROLE=all, a free inline slot); 0: every one is acknowledged first.
   */
  ASYNC_AT_ONCE_MAX_LICENCES: z.coerce.number().int().min(0).default(100),
  BODY_LIMIT_BYTES: z.coerce.number().int().min(1024).default(10 * 1024 * 1024),
  /** Inbound connections: a client must send its headers, then its whole request, within these. */
  HTTP_HEADERS_TIMEOUT_MS: z.coerce.number().int().min(100).default(10_000),
  HTTP_REQUEST_TIMEOUT_MS: z.coerce.number().int().min(100).default(30_000),
  /** Idle time before an unused keep-alive connection is closed. */
  HTTP_KEEP_ALIVE_TIMEOUT_MS: z.coerce.number().int().min(100).default(72_000),
  /** Open connections at once; further ones are closed as soon as they are accepted. */
  HTTP_MAX_CONNECTIONS: z.coerce.number().int().min(1).default(1000),
  /** Orders asking for more licences than this are rejected (400) before touching the store. */
  ORDER_MAX_QUANTITY: z.coerce.number().int().min(1).default(100_000),
  /** Fleet listings streamed at once (pages of more than 10,000 licences); the others wait their turn. */
  FLEET_STREAMS_MAX: z.coerce.number().int().min(1).default(2),
  /** Product catalogue: Orange offer codes this partner sells, mapped to its plans. */
  CATALOGUE_FILE: z.string().default("config/catalogue.json"),
  /** Name written as `note.author` on failed orders. */
  PARTNER_NAME: z.string().min(1).default("partner"),
  /**
   * sync: productOrder answers the final state; async: it answers `acknowledged`, the worker
   * carries the order out and sends completedStateNotification / failedStateNotification.
   */
  ORDERING_MODE: z.enum(["sync", "async", "auto"]).default("sync"),
  /** sync: userService/update answers the final state; async: `acknowledged`, then updateNotification. */
  UPDATE_MODE: z.enum(["sync", "async", "auto"]).default("sync"),
  TRUST_PROXY: bool(false),
  /**
   * Apply the migrations at start (the database role must own the schema). false: they are
   * applied beforehand by `npm run migrate` with an owner role, and the server runs with a role
   * that may only read and write rows (README, "Database roles").
   */
  MIGRATE_ON_START: bool(true),
  /** Validate every response against its wire schema (tests turn this on; costs CPU). */
  RESPONSE_VALIDATION: bool(false),

  INBOUND_AUTH_DISABLED: bool(false),
  INBOUND_BASIC_USER: optionalString,
  INBOUND_BASIC_PASSWORD: optionalString,
  INBOUND_BEARER_TOKEN: optionalString,
  INBOUND_API_KEY_HEADER: z.string().default("x-api-key"),
  INBOUND_API_KEY: optionalString,
  /** Comma-separated IPs or CIDR ranges; empty = any source address. */
  INBOUND_IP_ALLOWLIST: list,
  PING_REQUIRES_AUTH: bool(false),
  /** Bearer token of the operators' admin API (/admin/v1); unset = the admin API is disabled. */
  ADMIN_TOKEN: optionalString,
  /**
   * The partner's application's own credential: it opens only the routes the application calls
   * (its late provisioning results and its own licence changes), not the operators' admin API.
   */
  APP_TOKEN: optionalString,
  /** Bearer token of a Prometheus scraper: opens GET /metrics only (ADMIN_TOKEN opens it too). */
  METRICS_TOKEN: optionalString,

  /** none: the store is the record; webhook: the partner's application carries out every order and change. */
  PROVISIONING_MODE: z.enum(["none", "webhook"]).default("none"),
  PROVISIONING_URL: optionalString,
  /** whsec_… secrets, space-separated: every call is signed with each (rotation without downtime). */
  PROVISIONING_SECRET: optionalString,
  PROVISIONING_TIMEOUT_MS: z.coerce.number().int().min(100).default(10_000),
  PROVISIONING_RETRY_BASE_MS: z.coerce.number().int().min(1).default(2_000),
  PROVISIONING_RETRY_MAX_MS: z.coerce.number().int().min(1).default(300_000),
  PROVISIONING_MAX_ATTEMPTS: z.coerce.number().int().min(1).default(12),
  PROVISIONING_MAX_AGE_MS: z.coerce.number().int().min(1_000).default(3_600_000),
  /** sync/auto answers: how long Orange's call waits for the application (below the ~30 s HTTP callers wait). */
  PROVISIONING_SYNC_DEADLINE_MS: z.coerce.number().int().min(100).default(20_000),

  /** api: HTTP only; worker: event delivery only; all: both in one process. */
  ROLE: z.enum(["api", "worker", "all"]).default("all"),
  ORANGE_EVENT_BASE_URL: z.url().default("https://ope.apibackbone.orange.com"),
  ORANGE_OFFER: z.enum(["mba2", "mba2-beta"]).default("mba2"),
  ORANGE_PRODUCT_ORDERING_EVENT_PATH: z.string().startsWith("/").default("/productordering/v2/event"),
  ORANGE_USER_SERVICE_EVENT_PATH: z.string().startsWith("/").default("/userservice/v2/event"),
  ORANGE_TOKEN_URL: z.url().default("https://ope.apibackbone.orange.com/oauth/v3/token"),
  ORANGE_CLIENT_ID: optionalString,
  ORANGE_CLIENT_SECRET: optionalString,
  /** Deadline of one call to Orange (token or event). */
  ORANGE_EVENT_TIMEOUT_MS: z.coerce.number().int().min(100).default(10_000),
  EVENT_RETRY_BASE_MS: z.coerce.number().int().min(1).default(5_000),
  EVENT_RETRY_MAX_MS: z.coerce.number().int().min(1).default(3_600_000),
  EVENT_MAX_ATTEMPTS: z.coerce.number().int().min(1).default(12),
  EVENT_MAX_AGE_MS: z.coerce.number().int().min(1).default(86_400_000),
  WORKER_CONCURRENCY: z.coerce.number().int().min(1).max(1000).default(8),
  WORKER_INLINE_CONCURRENCY: z.coerce.number().int().min(0).max(1000).default(16),
  WORKER_LEASE_MS: z.coerce.number().int().min(1000).default(120_000),
  /** Jobs a worker process claims in one query and holds in memory for its free slots; 0: one query per job. Default 2 × WORKER_CONCURRENCY. */
  WORKER_PREFETCH: z.coerce.number().int().min(0).max(10_000).optional(),
  WORKER_POLL_INTERVAL_MS: z.coerce.number().int().min(10).default(1_000),
  WORKER_STOP_TIMEOUT_MS: z.coerce.number().int().min(0).default(10_000),
  /** How often the worker sweeps: jobs of dead workers, work without a job, commands past their lease or bounds. */
  WORKER_SWEEP_INTERVAL_MS: z.coerce.number().int().min(100).default(30_000),
});


export interface InboundAuthConfig {
  disabled: boolean;
  basic?: { user: string; password: string };
  bearerToken?: string;
  apiKey?: { header: string; value: string };
  ipAllowList: string[];
  pingOpen: boolean;
}

export type Role = "api" | "worker" | "all";

/** How an Orange API is answered (contract section 5); auto: sync when the application answers in time, else async. */
export type AnswerMode = "sync" | "async" | "auto";

export interface OrangeEventsConfig {
  baseUrl: string;
  offer: "mba2" | "mba2-beta";
  productOrderingPath: string;
  userServicePath: string;
  tokenUrl: string;
  /** Both set, or neither (then events are queued but not delivered). */
  clientId?: string;
  clientSecret?: string;
  timeoutMs: number;
}

/** Limits of the node:http server under Fastify (Fastify's own timeouts do not apply to it). */
export interface HttpLimits {
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
}

export interface WorkerConfig {
  concurrency: number;
  /** Acknowledged requests carried out at once by the process that acknowledged them (ROLE=all); 0: none, each gets a job. */
  inlineConcurrency: number;
  leaseMs: number;
  /** Jobs claimed in one query and held in memory until a slot is free (0: one query per job). */
  prefetch: number;
  pollIntervalMs: number;
  stopTimeoutMs: number;
  sweepIntervalMs: number;
  retry: { baseMs: number; maxMs: number; maxAttempts: number; maxAgeMs: number };
}

export interface Config {
  role: Role;
  host: string;
  port: number;
  logLevel: string;
  databaseUrl?: string;
  migrateOnStart: boolean;
  dataDir: string;
  embeddedPgPort: number;
  databasePoolMax: number;
  databaseConnectTimeoutMs: number;
  transactionTimeoutMs: number;
  requestMaxAttempts: number;
  /** Async requests of at most this many licences are carried out before their acknowledgement (inline). */
  asyncAtOnceMaxLicences: number;
  bodyLimitBytes: number;
  http: HttpLimits;
  orderMaxQuantity: number;
  /** Fleet listings streamed at once; the others wait for one to end. */
  fleetStreamsMax: number;
  catalogueFile: string;
  partnerName: string;
  orderingMode: AnswerMode;
  updateMode: AnswerMode;
  trustProxy: boolean;
  responseValidation: boolean;
  inboundAuth: InboundAuthConfig;
  /** The operators' admin API (/admin/v1): disabled (503) when no token is configured. */
  admin: { token?: string };
  /** The partner's application's credential (results, its own licence changes). */
  app: { token?: string };
  /** GET /metrics: the scraper's own token (ADMIN_TOKEN opens it too). */
  metrics: { token?: string };
  provisioning: ProvisioningConfig;
  orange: OrangeEventsConfig;
  worker: WorkerConfig;
}

export interface ProvisioningConfig {
  mode: "none" | "webhook";
  url?: string;
  /** The raw space-separated whsec_ list (src/provisioning parses it). */
  secret?: string;
  timeoutMs: number;
  retry: { baseMs: number; maxMs: number; maxAttempts: number; maxAgeMs: number };
  syncDeadlineMs: number;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const parsed = EnvSchema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n  ${lines.join("\n  ")}`);
  }
  const e = parsed.data;
  if ((e.INBOUND_BASIC_USER === undefined) !== (e.INBOUND_BASIC_PASSWORD === undefined)) {
    throw new ConfigError("INBOUND_BASIC_USER and INBOUND_BASIC_PASSWORD must be set together");
  }
  if ((e.ORANGE_CLIENT_ID === undefined) !== (e.ORANGE_CLIENT_SECRET === undefined)) {
    throw new ConfigError("ORANGE_CLIENT_ID and ORANGE_CLIENT_SECRET must be set together");
  }
  if (
    e.ADMIN_TOKEN !== undefined &&
    [e.INBOUND_BEARER_TOKEN, e.INBOUND_API_KEY, e.INBOUND_BASIC_PASSWORD].includes(e.ADMIN_TOKEN)
  ) {
    // One leaked secret must not open both doors: Orange's credential never works on /admin.
    throw new ConfigError("ADMIN_TOKEN must differ from every inbound (Orange) credential");
  }
  if (e.HTTP_HEADERS_TIMEOUT_MS > e.HTTP_REQUEST_TIMEOUT_MS) {
    // Node refuses it: the headers are part of the request.
    throw new ConfigError("HTTP_HEADERS_TIMEOUT_MS must not be larger than HTTP_REQUEST_TIMEOUT_MS");
  }
  if (e.APP_TOKEN !== undefined && [e.INBOUND_BEARER_TOKEN, e.INBOUND_API_KEY, e.INBOUND_BASIC_PASSWORD, e.ADMIN_TOKEN].includes(e.APP_TOKEN)) {
    throw new ConfigError("APP_TOKEN must differ from ADMIN_TOKEN and from every inbound (Orange) credential");
  }
  if (
    e.METRICS_TOKEN !== undefined &&
    [e.INBOUND_BEARER_TOKEN, e.INBOUND_API_KEY, e.INBOUND_BASIC_PASSWORD, e.ADMIN_TOKEN, e.APP_TOKEN].includes(e.METRICS_TOKEN)
  ) {
    throw new ConfigError("METRICS_TOKEN must differ from ADMIN_TOKEN, APP_TOKEN and every inbound (Orange) credential");
  }
  if (e.PROVISIONING_MODE === "webhook") {
    if (e.PROVISIONING_URL === undefined) {
      throw new ConfigError("PROVISIONING_MODE=webhook needs PROVISIONING_URL: the HTTPS endpoint of the partner's application");
    }
    let url: URL;
    try {
      url = new URL(e.PROVISIONING_URL);
    } catch {
      throw new ConfigError(`PROVISIONING_URL is not a URL (got ${JSON.stringify(e.PROVISIONING_URL)})`);
    }
    const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
    if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
      throw new ConfigError("PROVISIONING_URL must be https:// (plain http is accepted for localhost only)");
    }
    if (e.PROVISIONING_SECRET === undefined) {
      throw new ConfigError(
        "PROVISIONING_MODE=webhook needs PROVISIONING_SECRET: one or more whsec_<base64> secrets, space-separated, shared with the application",
      );
    }
    try {
      parseWebhookSecrets(e.PROVISIONING_SECRET, "PROVISIONING_SECRET");
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
    if (e.PROVISIONING_RETRY_MAX_MS < e.PROVISIONING_RETRY_BASE_MS) {
      throw new ConfigError("PROVISIONING_RETRY_MAX_MS must not be smaller than PROVISIONING_RETRY_BASE_MS");
    }
  }
  for (const [name, mode] of [["ORDERING_MODE", e.ORDERING_MODE], ["UPDATE_MODE", e.UPDATE_MODE]] as const) {
    if (mode === "auto" && (e.ORANGE_CLIENT_ID === undefined || e.ORANGE_CLIENT_SECRET === undefined)) {
      throw new ConfigError(
        `${name}=auto needs ORANGE_CLIENT_ID and ORANGE_CLIENT_SECRET: an order or update the application has not confirmed ` +
          "within the deadline is answered acknowledged, and its outcome goes to Orange as an event",
      );
    }
  }
  if (e.EVENT_RETRY_MAX_MS < e.EVENT_RETRY_BASE_MS) {
    throw new ConfigError("EVENT_RETRY_MAX_MS must not be smaller than EVENT_RETRY_BASE_MS");
  }
  // A job waits in a worker's memory up to a sixth of the lease (WORKER_PREFETCH), then its run
  // of the delivery lasts up to a third of it plus one delivery (token request and two POSTs at
  // most): a shorter lease would hand live deliveries to another worker.
  if (e.WORKER_LEASE_MS < 6 * e.ORANGE_EVENT_TIMEOUT_MS) {
    throw new ConfigError("WORKER_LEASE_MS must be at least 6 × ORANGE_EVENT_TIMEOUT_MS");
  }
  if (e.WORKER_PREFETCH !== undefined && e.WORKER_PREFETCH > 0 && e.WORKER_PREFETCH < e.WORKER_CONCURRENCY) {
    throw new ConfigError("WORKER_PREFETCH must be 0 (off) or at least WORKER_CONCURRENCY: the jobs claimed at once serve every slot");
  }
  return {
    role: e.ROLE,
    host: e.HOST,
    port: e.PORT,
    logLevel: e.LOG_LEVEL,
    databaseUrl: e.DATABASE_URL,
    migrateOnStart: e.MIGRATE_ON_START,
    dataDir: e.DATA_DIR,
    embeddedPgPort: e.EMBEDDED_PG_PORT,
    databasePoolMax: e.DATABASE_POOL_MAX,
    databaseConnectTimeoutMs: e.DATABASE_CONNECT_TIMEOUT_MS,
    transactionTimeoutMs: e.DATABASE_TRANSACTION_TIMEOUT_MS,
    requestMaxAttempts: e.REQUEST_MAX_ATTEMPTS,
    asyncAtOnceMaxLicences: e.ASYNC_AT_ONCE_MAX_LICENCES,
    bodyLimitBytes: e.BODY_LIMIT_BYTES,
    http: {
      headersTimeoutMs: e.HTTP_HEADERS_TIMEOUT_MS,
      requestTimeoutMs: e.HTTP_REQUEST_TIMEOUT_MS,
      keepAliveTimeoutMs: e.HTTP_KEEP_ALIVE_TIMEOUT_MS,
      maxConnections: e.HTTP_MAX_CONNECTIONS,
    },
    orderMaxQuantity: e.ORDER_MAX_QUANTITY,
    fleetStreamsMax: e.FLEET_STREAMS_MAX,
    catalogueFile: e.CATALOGUE_FILE,
    partnerName: e.PARTNER_NAME,
    orderingMode: e.ORDERING_MODE,
    updateMode: e.UPDATE_MODE,
    trustProxy: e.TRUST_PROXY,
    responseValidation: e.RESPONSE_VALIDATION,
    inboundAuth: {
      disabled: e.INBOUND_AUTH_DISABLED,
      basic:
        e.INBOUND_BASIC_USER !== undefined && e.INBOUND_BASIC_PASSWORD !== undefined
          ? { user: e.INBOUND_BASIC_USER, password: e.INBOUND_BASIC_PASSWORD }
          : undefined,
      bearerToken: e.INBOUND_BEARER_TOKEN,
      apiKey:
        e.INBOUND_API_KEY !== undefined
          ? { header: e.INBOUND_API_KEY_HEADER.toLowerCase(), value: e.INBOUND_API_KEY }
          : undefined,
      ipAllowList: e.INBOUND_IP_ALLOWLIST,
      pingOpen: !e.PING_REQUIRES_AUTH,
    },
    admin: { token: e.ADMIN_TOKEN },
    app: { token: e.APP_TOKEN },
    metrics: { token: e.METRICS_TOKEN },
    provisioning: {
      mode: e.PROVISIONING_MODE,
      url: e.PROVISIONING_URL,
      secret: e.PROVISIONING_SECRET,
      timeoutMs: e.PROVISIONING_TIMEOUT_MS,
      retry: {
        baseMs: e.PROVISIONING_RETRY_BASE_MS,
        maxMs: e.PROVISIONING_RETRY_MAX_MS,
        maxAttempts: e.PROVISIONING_MAX_ATTEMPTS,
        maxAgeMs: e.PROVISIONING_MAX_AGE_MS,
      },
      syncDeadlineMs: e.PROVISIONING_SYNC_DEADLINE_MS,
    },
    orange: {
      baseUrl: e.ORANGE_EVENT_BASE_URL,
      offer: e.ORANGE_OFFER,
      productOrderingPath: e.ORANGE_PRODUCT_ORDERING_EVENT_PATH,
      userServicePath: e.ORANGE_USER_SERVICE_EVENT_PATH,
      tokenUrl: e.ORANGE_TOKEN_URL,
      clientId: e.ORANGE_CLIENT_ID,
      clientSecret: e.ORANGE_CLIENT_SECRET,
      timeoutMs: e.ORANGE_EVENT_TIMEOUT_MS,
    },
    worker: {
      concurrency: e.WORKER_CONCURRENCY,
      inlineConcurrency: e.WORKER_INLINE_CONCURRENCY,
      leaseMs: e.WORKER_LEASE_MS,
      prefetch: e.WORKER_PREFETCH ?? 2 * e.WORKER_CONCURRENCY,
      pollIntervalMs: e.WORKER_POLL_INTERVAL_MS,
      stopTimeoutMs: e.WORKER_STOP_TIMEOUT_MS,
      sweepIntervalMs: e.WORKER_SWEEP_INTERVAL_MS,
      retry: {
        baseMs: e.EVENT_RETRY_BASE_MS,
        maxMs: e.EVENT_RETRY_MAX_MS,
        maxAttempts: e.EVENT_MAX_ATTEMPTS,
        maxAgeMs: e.EVENT_MAX_AGE_MS,
      },
    },
  };
}

/** True when at least one way for Orange to prove who it is has been configured. */
export function hasInboundCredential(auth: InboundAuthConfig): boolean {
  return auth.basic !== undefined || auth.bearerToken !== undefined || auth.apiKey !== undefined;
}
