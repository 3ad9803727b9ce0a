/**
 * `npm run simulate` / `npx orange-simulate`: plays Orange's IT against a partner server.
 *
 *   npm run simulate                                   # our own server, embedded database: sync, async, then
 *                                                      # PROVISIONING_MODE=webhook with a mock application
 *   npm run simulate -- --target https://partner.example --auth-bearer "$TOKEN" --ordering async
 *   npm run simulate -- --target … --provisioning webhook --app-secret whsec_… --app-port 8081 --app-token …
 *   npm run simulate -- --target … --load 8 --duration 30
 *
 * Exit status: 0 when every check passed, 1 when one failed or was skipped, 2 on a usage error.
 */
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import { z } from "zod";
import { newWebhookSecret, startMockApplication, type MockApplication } from "./application.js";
import { startMockGateway, type MockGateway } from "./gateway.js";
import { renderLoadText, runLoad } from "./load.js";
import { renderHtml, renderJson, renderJunit, renderText } from "./report.js";
import { DEFAULT_SYNC_DEADLINE_MS, runScenarios, type ProvisioningRun, type RunReport, type TargetAuth } from "./runner.js";
import { loadScenarios } from "./scenario.js";
import { DEFAULT_CATALOGUE, freePort, selfHostedVersion, startSelfHostedServer } from "./self-host.js";

type Mode = "sync" | "async";
type Modes = { ordering: Mode; update: Mode };
type Provisioning = ProvisioningRun["mode"];

/** What a run plays against, once started. */
interface Hosted {
  url: string;
  auth: TargetAuth;
  knownVersion?: RunReport["targetVersion"] & { version: string };
  provisioning?: ProvisioningRun;
  stop: () => Promise<void>;
}

/**
 * A server to play against: given (`url`, `auth`), or started for the run (`host`) and stopped
 * after; `host` also starts what the run needs beside it (the mock application of a webhook run).
 */
interface Target {
  url: string;
  auth: TargetAuth;
  modes: Modes;
  provisioning: Provisioning;
  host?: () => Promise<Hosted>;
}

/** The self-hosted server's PROVISIONING_SYNC_DEADLINE_MS: short, so that the late and down scenarios take seconds. */
export const SELF_HOSTED_SYNC_DEADLINE_MS = 2_000;

/**
 * The self-hosted server's retries of a command its application did not answer: quick, so that
 * an application down then back is seen completing within a scenario, and many, so that they do
 * not run out while it is down. The delays are full jitter (anywhere from 0 to their ceiling):
 * the server's 12 attempts, 11 delays of at most 100–500 ms, could all be spent before the sync
 * deadline, and the order then ended `failed` where the scenario expects a 503 (chain-down, now
 * and then). The age bound stays the server's (an hour).
 */
export const SELF_HOSTED_RETRY = { PROVISIONING_RETRY_BASE_MS: "100", PROVISIONING_RETRY_MAX_MS: "500", PROVISIONING_MAX_ATTEMPTS: "1000" };

const BUILTIN_SCENARIOS = fileURLToPath(new URL("../../scenarios/", import.meta.url));

/** The server's ORANGE_OFFER default: events go to /mba2/… unless told otherwise. */
export const DEFAULT_OFFER = "mba2";

/**
 * The offer codes of the server's default catalogue (config/catalogue.json), read as data: the
 * simulator orders what the server sells out of the box. The first two are the ones the built-in
 * scenarios order and swap to.
 */
export async function defaultOfferCodes(file = DEFAULT_CATALOGUE): Promise<string[]> {
  const Catalogue = z.object({ offers: z.array(z.object({ code: z.string().min(1) })).min(1) });
  try {
    return Catalogue.parse(JSON.parse(await readFile(file, "utf8"))).offers.map((o) => o.code);
  } catch (err) {
    throw new UsageError(`cannot take the default offer codes from ${file} (${err instanceof Error ? err.message.split("\n")[0] : String(err)}): give --offers`);
  }
}

/** `20260502T091502Z`: sortable, valid in every file system. */
export function reportStamp(date: Date): string {
  return date.toISOString().replace(/\.\d+Z$/, "Z").replace(/[-:]/g, "");
}

/**
 * The report files of a run. Default: `simulate-report-<UTC time>.{json,html}` in the working
 * directory, or with the JUnit file too under `--report-dir`; never a previous run's name (a
 * `-2`, `-3`… is added within one second). An explicit `--report-*` file wins for its kind.
 */
export async function reportFiles(
  values: { "report-json"?: string; "report-html"?: string; "report-junit"?: string; "report-dir"?: string },
  now: Date,
): Promise<{ json: string; html: string; junit?: string }> {
  const dir = resolve(values["report-dir"] ?? ".");
  if (values["report-dir"] !== undefined) await mkdir(dir, { recursive: true });
  const exts = values["report-dir"] !== undefined ? ["json", "html", "xml"] : ["json", "html"];
  let stem = join(dir, `simulate-report-${reportStamp(now)}`);
  for (let n = 2; exts.some((ext) => existsSync(`${stem}.${ext}`)); n++) stem = join(dir, `simulate-report-${reportStamp(now)}-${n}`);
  const junit = values["report-junit"] ?? (values["report-dir"] !== undefined ? `${stem}.xml` : undefined);
  return {
    json: resolve(values["report-json"] ?? `${stem}.json`),
    html: resolve(values["report-html"] ?? `${stem}.html`),
    ...(junit === undefined ? {} : { junit: resolve(junit) }),
  };
}

const HELP = `Usage: npm run simulate -- [options]

Plays Orange's IT against a partner server (contract scenarios, events at a mock Orange gateway)
and reports every check. Without --target, starts this repository's server on its embedded
database and runs the suite three times: sync answers, async answers, then with
PROVISIONING_MODE=webhook and a mock of the partner's application (plus the chain scenarios).

Target
  --target URL              the partner server's base URL (omit: self-hosted)
  --auth-bearer TOKEN       Orange's inbound credentials on the target: a bearer token,
  --auth-basic USER:PASS    HTTP Basic,
  --auth-header "NAME: VALUE"  or an API key header (default: none)
  --ordering sync|async     how the target answers productOrder (default sync)
  --update sync|async       how the target answers userService/update (default sync)
  --offers CODE,CODE        Orange offer codes in the target's catalogue (default: the codes of this
                            repository's config/catalogue.json, the server's default catalogue)

The partner's application (PROVISIONING_MODE=webhook: the target has its application carry out
every order and change; the simulator hosts a mock of that application, the reference one of
examples/partner-app, and plays the chain scenarios: refused, late and down-then-back commands)
  --provisioning none|webhook  the target's PROVISIONING_MODE. Self-hosted, default both: the runs
                            with none (sync, then async), then a run with webhook (ordering sync,
                            update async, unless --ordering/--update). With --target, default none
  --app-url URL             host no mock application: the target's own application is at URL
                            (implies webhook; self-hosted, the server sends its commands there,
                            signed with --app-secret). The scenarios that set the application's
                            behaviour or read what it received are not played, with a note
  --app-host HOST           the mock application's interface (default 127.0.0.1)
  --app-port PORT           its port (default: a free one); commands go to http://HOST:PORT/webhooks/orange
  --app-secret whsec_…      the secret the target signs its commands with (its PROVISIONING_SECRET):
                            needed with --target; self-hosted, default a fresh one
  --app-token TOKEN         the target's APP_TOKEN: the mock application reports a late result (after
                            its 202) with it. Without it, with --target, the late scenario is not played
  --sync-deadline MS        the target's PROVISIONING_SYNC_DEADLINE_MS (default 20000, the server's;
                            self-hosted: ${SELF_HOSTED_SYNC_DEADLINE_MS}, set on the server). Sync answers may take that long:
                            the request timeout of a webhook run is at least this plus 5 s

Mock Orange gateway (the target sends its events here)
  --gateway-host HOST       interface to listen on (default 127.0.0.1)
  --gateway-port PORT       port (default: a free one)
  --offer mba2|mba2-beta    offer segment the target must post its events under (its ORANGE_OFFER;
                            default mba2, as the server's): /{offer}/productordering/v2/event and
                            /{offer}/userservice/v2/event; another offer is a failed check
  --client-id ID            OAuth client id the gateway accepts (default partner-client-id)
  --client-secret SECRET    its secret (default partner-client-secret)
  --token-expires-in S      expires_in of the tokens it issues (default 3600)
  --gateway-only            run the mock gateway alone and print each event it receives, until Ctrl-C

Scenarios
  --scenarios PATH          a scenario file or directory (repeatable); adds to the built-in suite
  --no-builtin              run only the --scenarios given
  --only NAMES              comma-separated scenario names or tags to run
  --skip NAMES              comma-separated scenario names or tags to leave out
  --event-timeout MS        how long to wait for an event (default 10000)
  --request-timeout MS      how long to wait for an answer (default 10000)

Report
  (the terminal shows the failed checks, with expected, got and curl, and a summary)
  --verbose                 print every check, passed ones too
  --report-dir DIR          write the JSON, HTML and JUnit reports into DIR, as
                            simulate-report-<UTC time>.{json,html,xml}
  --report-json FILE        default simulate-report-<UTC time>.json (in --report-dir, or here)
  --report-html FILE        default simulate-report-<UTC time>.html (in --report-dir, or here)
  --report-junit FILE       JUnit XML for CI (one testsuite per scenario, one testcase per check);
                            default: none, or simulate-report-<UTC time>.xml with --report-dir
  --show-secrets            print credentials in the curl lines instead of placeholders
  --no-color

Load mode (instead of the scenarios)
  --load N                  N concurrent virtual Orange users placing orders and updates
  --duration S              for S seconds (default 10); self-hosted, with provisioning none unless
                            --provisioning webhook (then through the mock application, answering at once)
`;

class UsageError extends Error {}

/** Runs `fn` against the target: a given one as is, a hosted one started before and stopped after. */
async function withTarget<T>(target: Target, fn: (hosted: Omit<Hosted, "stop">) => Promise<T>): Promise<T> {
  if (!target.host) return fn({ url: target.url, auth: target.auth });
  const hosted = await target.host();
  try {
    return await fn(hosted);
  } finally {
    await hosted.stop();
  }
}

function provisioningOption(value: string | undefined): Provisioning | undefined {
  if (value === undefined || value === "none" || value === "webhook") return value;
  throw new UsageError(`--provisioning must be none or webhook, not "${value}"`);
}

/** A `whsec_` secret as the server's PROVISIONING_SECRET takes it (one of them). */
function webhookSecret(value: string): string {
  const b64 = value.startsWith("whsec_") ? value.slice("whsec_".length) : "";
  const bytes = Buffer.from(b64, "base64");
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || bytes.toString("base64") !== b64 || bytes.length < 24 || bytes.length > 64) {
    throw new UsageError("--app-secret must be whsec_ followed by the standard, padded base64 of 24 to 64 bytes (the target's PROVISIONING_SECRET)");
  }
  return value;
}

function httpUrl(value: string, option: string): string {
  const url = value.replace(/\/+$/, "");
  if (!/^https?:\/\/[^/]/.test(url)) throw new UsageError(`--${option} must be an http(s) URL, not "${value}"`);
  return url;
}

function parseAuth(values: { "auth-bearer"?: string; "auth-basic"?: string; "auth-header"?: string }): TargetAuth {
  const given = [values["auth-bearer"], values["auth-basic"], values["auth-header"]].filter((v) => v !== undefined);
  if (given.length > 1) throw new UsageError("give one of --auth-bearer, --auth-basic, --auth-header");
  if (values["auth-bearer"] !== undefined) return { kind: "bearer", token: values["auth-bearer"] };
  if (values["auth-basic"] !== undefined) {
    const i = values["auth-basic"].indexOf(":");
    if (i <= 0) throw new UsageError("--auth-basic must be USER:PASSWORD");
    return { kind: "basic", user: values["auth-basic"].slice(0, i), password: values["auth-basic"].slice(i + 1) };
  }
  if (values["auth-header"] !== undefined) {
    const i = values["auth-header"].indexOf(":");
    if (i <= 0) throw new UsageError('--auth-header must be "NAME: VALUE"');
    return { kind: "header", name: values["auth-header"].slice(0, i).trim(), value: values["auth-header"].slice(i + 1).trim() };
  }
  return { kind: "none" };
}

function mode(value: string | undefined, option: string): Mode {
  if (value === undefined || value === "sync" || value === "async") return value ?? "sync";
  throw new UsageError(`--${option} must be sync or async, not "${value}"`);
}

function positiveInt(value: string | undefined, option: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${option} must be an integer >= 1, not "${value}"`);
  return n;
}

function list(value: string | undefined): string[] | undefined {
  return value
    ?.split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    allowPositionals: false,
    options: {
      target: { type: "string" },
      "auth-bearer": { type: "string" },
      "auth-basic": { type: "string" },
      "auth-header": { type: "string" },
      ordering: { type: "string" },
      update: { type: "string" },
      offers: { type: "string" },
      "gateway-host": { type: "string" },
      "gateway-port": { type: "string" },
      "gateway-only": { type: "boolean" },
      offer: { type: "string" },
      "client-id": { type: "string" },
      "client-secret": { type: "string" },
      "token-expires-in": { type: "string" },
      scenarios: { type: "string", multiple: true },
      "no-builtin": { type: "boolean" },
      only: { type: "string" },
      skip: { type: "string" },
      "event-timeout": { type: "string" },
      "request-timeout": { type: "string" },
      provisioning: { type: "string" },
      "app-url": { type: "string" },
      "app-host": { type: "string" },
      "app-port": { type: "string" },
      "app-secret": { type: "string" },
      "app-token": { type: "string" },
      "sync-deadline": { type: "string" },
      "report-json": { type: "string" },
      "report-html": { type: "string" },
      "report-junit": { type: "string" },
      "report-dir": { type: "string" },
      verbose: { type: "boolean" },
      "show-secrets": { type: "boolean" },
      "no-color": { type: "boolean" },
      load: { type: "string" },
      duration: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }

  const log = (line: string) => process.stdout.write(`${line}\n`);
  const offer = values.offer ?? DEFAULT_OFFER;
  if (offer !== "mba2" && offer !== "mba2-beta") throw new UsageError(`--offer must be mba2 or mba2-beta, not "${offer}"`);
  const offers = list(values.offers) ?? (await defaultOfferCodes());
  if (offers.length === 0) throw new UsageError("--offers needs at least one offer code");
  if (offers.length === 1 && values.load === undefined) {
    log(`note: one offer code given; the built-in swap of offer needs two (${"${offers.1}"}) and its steps will be skipped`);
  }
  const eventTimeoutMs = positiveInt(values["event-timeout"], "event-timeout", 10_000);
  const requestTimeoutMs = positiveInt(values["request-timeout"], "request-timeout", 10_000);
  let provisioning = provisioningOption(values.provisioning);
  const appUrl = values["app-url"] === undefined ? undefined : httpUrl(values["app-url"], "app-url");
  if (appUrl !== undefined) {
    if (provisioning === "none") throw new UsageError("--app-url names the target's application: it goes with --provisioning webhook");
    provisioning = "webhook";
  }
  const appSecret = values["app-secret"] === undefined ? undefined : webhookSecret(values["app-secret"]);
  const appHost = values["app-host"] ?? "127.0.0.1";
  const appPort = values["app-port"] === undefined ? undefined : positiveInt(values["app-port"], "app-port", 0);
  const color = !values["no-color"] && process.stdout.isTTY === true;

  const gateway = await startMockGateway({
    ...(values["gateway-host"] === undefined ? {} : { host: values["gateway-host"] }),
    ...(values["gateway-port"] === undefined ? {} : { port: positiveInt(values["gateway-port"], "gateway-port", 0) }),
    ...(values["client-id"] === undefined ? {} : { clientId: values["client-id"] }),
    ...(values["client-secret"] === undefined ? {} : { clientSecret: values["client-secret"] }),
    expiresIn: positiveInt(values["token-expires-in"], "token-expires-in", 3600),
    offer,
  });
  try {
    if (values["gateway-only"]) return await gatewayOnly(gateway, log);
    log(`mock Orange gateway: events ${gateway.url}/${offer}/{productordering|userservice}/v2/event, token ${gateway.tokenUrl}`);

    // Targets: the one given, or our own server once per mode.
    const targets: Target[] = [];
    let dataDir: string | undefined;
    if (values.target !== undefined) {
      const url = values.target.replace(/\/+$/, "");
      if (!/^https?:\/\//.test(url)) throw new UsageError(`--target must be an http(s) URL, not "${values.target}"`);
      const modes = { ordering: mode(values.ordering, "ordering"), update: mode(values.update, "update") };
      const auth = parseAuth(values);
      const target: Target = { url, auth, modes, provisioning: provisioning ?? "none" };
      if (target.provisioning === "webhook") {
        const syncDeadlineMs = positiveInt(values["sync-deadline"], "sync-deadline", DEFAULT_SYNC_DEADLINE_MS);
        if (appUrl === undefined && appSecret === undefined) {
          throw new UsageError(
            "--provisioning webhook against a --target hosts the mock application the target sends its commands to: give --app-secret " +
              "(the target's PROVISIONING_SECRET), or --app-url when the target's own application is behind it",
          );
        }
        target.host = async () => {
          if (appUrl !== undefined) return { url, auth, provisioning: { mode: "webhook", applicationUrl: appUrl, syncDeadlineMs }, stop: async () => {} };
          const application = await startMockApplication({
            secret: appSecret!,
            host: appHost,
            ...(appPort === undefined ? {} : { port: appPort }),
            serverUrl: url,
            ...(values["app-token"] === undefined ? {} : { appToken: values["app-token"] }),
          });
          log(`mock application: the target must send its commands to PROVISIONING_URL=${application.webhookUrl}, signed with the --app-secret`);
          if (!application.reports) log("  no --app-token: the mock application cannot report a late result, the late scenario is not played");
          return { url, auth, provisioning: { mode: "webhook", application, syncDeadlineMs }, stop: () => application.close() };
        };
      }
      targets.push(target);
      if (modes.ordering === "async" || modes.update === "async") {
        log(
          `  the target must send its events to ORANGE_EVENT_BASE_URL=${gateway.url} with ORANGE_OFFER=${offer}, token URL ${gateway.tokenUrl}, ` +
            `client id ${gateway.clientId}${values["show-secrets"] ? `, secret ${gateway.clientSecret}` : ""}`,
        );
      }
    } else {
      dataDir = await mkdtemp(join(tmpdir(), "orange-simulate-"));
      // As root, the embedded PostgreSQL runs as a `postgres` user, which must reach its data.
      await chmod(dataDir, 0o755);
      const knownVersion = await selfHostedVersion();
      const given = values.ordering !== undefined || values.update !== undefined;
      const givenModes: Modes = { ordering: mode(values.ordering, "ordering"), update: mode(values.update, "update") };
      const modeList: Modes[] = given
        ? [givenModes]
        : [
            { ordering: "sync", update: "sync" },
            { ordering: "async", update: "async" },
          ];
      const dir = dataDir;
      // The load mode measures the server alone unless asked for the application in between.
      const provisionings: Provisioning[] = provisioning !== undefined ? [provisioning] : values.load !== undefined ? ["none"] : ["none", "webhook"];
      if (provisionings.includes("none")) {
        for (const modes of modeList) {
          targets.push({
            url: "",
            auth: { kind: "none" },
            modes,
            provisioning: "none",
            host: async () => {
              log(`starting this repository's server (ordering ${modes.ordering}, update ${modes.update}) on its embedded database …`);
              const server = await startSelfHostedServer({ gateway, modes, dataDir: dir, offer });
              log(`  ${server.url} ready`);
              return { url: server.url, auth: { kind: "bearer", token: server.token }, knownVersion, stop: () => server.stop() };
            },
          });
        }
      }
      if (provisionings.includes("webhook")) {
        if (appUrl !== undefined && appSecret === undefined) {
          throw new UsageError("--app-url: give --app-secret too, the secret the server signs its commands with and your application verifies");
        }
        // One run covers both ways of answering Orange through the application: orders wait for it (sync), updates get events (async).
        const modes: Modes = given ? givenModes : { ordering: "sync", update: "async" };
        const syncDeadlineMs = positiveInt(values["sync-deadline"], "sync-deadline", SELF_HOSTED_SYNC_DEADLINE_MS);
        targets.push({
          url: "",
          auth: { kind: "none" },
          modes,
          provisioning: "webhook",
          host: async () => {
            const port = await freePort();
            const serverUrl = `http://127.0.0.1:${port}`;
            const secret = appSecret ?? newWebhookSecret();
            const appToken = values["app-token"] ?? randomBytes(18).toString("base64url");
            let application: MockApplication | undefined;
            if (appUrl === undefined) {
              application = await startMockApplication({ secret, host: appHost, ...(appPort === undefined ? {} : { port: appPort }), serverUrl, appToken });
            }
            const provisioningUrl = application?.webhookUrl ?? appUrl!;
            log(
              `starting this repository's server (ordering ${modes.ordering}, update ${modes.update}, PROVISIONING_MODE=webhook → ` +
                `${application ? `the mock application ${provisioningUrl}` : `your application ${provisioningUrl}`}) on its embedded database …`,
            );
            try {
              const server = await startSelfHostedServer({
                gateway,
                modes,
                dataDir: dir,
                offer,
                port,
                env: {
                  PROVISIONING_MODE: "webhook",
                  PROVISIONING_URL: provisioningUrl,
                  PROVISIONING_SECRET: secret,
                  APP_TOKEN: appToken,
                  PROVISIONING_SYNC_DEADLINE_MS: String(syncDeadlineMs),
                  ...SELF_HOSTED_RETRY,
                },
              });
              log(`  ${server.url} ready`);
              if (!application) {
                log(`  your application reports late results to ${server.url}/admin/v1/provisioning/{webhook-id}/result with the --app-token`);
              }
              return {
                url: server.url,
                auth: { kind: "bearer", token: server.token },
                knownVersion,
                provisioning: application ? { mode: "webhook", application, syncDeadlineMs } : { mode: "webhook", applicationUrl: appUrl!, syncDeadlineMs },
                stop: async () => {
                  await server.stop();
                  await application?.close();
                },
              };
            } catch (err) {
              await application?.close();
              throw err;
            }
          },
        });
      }
    }

    try {
      if (values.load !== undefined) return await loadMode(values, targets, gateway, offers, requestTimeoutMs, log);

      const scenarioPaths = [...(values["no-builtin"] ? [] : [BUILTIN_SCENARIOS]), ...(values.scenarios ?? [])];
      if (scenarioPaths.length === 0) throw new UsageError("--no-builtin needs at least one --scenarios PATH");
      const scenarios = await loadScenarios(scenarioPaths);
      const runs: RunReport[] = [];
      for (const target of targets) {
        runs.push(
          await withTarget(target, ({ url, auth, knownVersion, provisioning: p }) => {
            log(`\n== ${url} · ordering ${target.modes.ordering} · update ${target.modes.update}${p?.mode === "webhook" ? " · provisioning webhook" : ""}`);
            return runScenarios({
              target: url,
              auth,
              modes: target.modes,
              offer,
              offers,
              gateway,
              eventTimeoutMs,
              // Sync answers of a webhook run may wait for the application up to the target's deadline.
              requestTimeoutMs: p?.mode === "webhook" ? Math.max(requestTimeoutMs, (p.syncDeadlineMs ?? DEFAULT_SYNC_DEADLINE_MS) + 5_000) : requestTimeoutMs,
              scenarios,
              ...(p ? { provisioning: p } : {}),
              ...(list(values.only) ? { only: list(values.only) } : {}),
              ...(list(values.skip) ? { skip: list(values.skip) } : {}),
              showSecrets: values["show-secrets"] === true,
              ...(knownVersion ? { knownVersion } : {}),
              // Live: one line per scenario (every check with --verbose); the details come at the end.
              log: (line) => {
                if (values.verbose || !line.includes(" › ")) log(line);
              },
            });
          }),
        );
      }

      const files = await reportFiles(values, new Date(runs[0]?.startedAt ?? Date.now()));
      await writeFile(files.json, renderJson(runs));
      await writeFile(files.html, renderHtml(runs));
      if (files.junit !== undefined) await writeFile(files.junit, renderJunit(runs));
      log(`\n${renderText(runs, { color, verbose: values.verbose === true })}`);
      log(`reports: ${[files.json, files.html, files.junit].filter((f) => f !== undefined).join(", ")}`);
      return runs.every((r) => r.summary.failed === 0 && r.summary.skipped === 0) ? 0 : 1;
    } finally {
      if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
    }
  } finally {
    await gateway.close();
  }
}

async function loadMode(
  values: { load?: string; duration?: string },
  targets: Target[],
  gateway: MockGateway,
  offers: string[],
  requestTimeoutMs: number,
  log: (line: string) => void,
): Promise<number> {
  const concurrency = positiveInt(values.load, "load", 1);
  const durationMs = positiveInt(values.duration, "duration", 10) * 1000;
  let failed = false;
  for (const target of targets) {
    const report = await withTarget(target, ({ url, auth }) => {
      log(`\n== load: ${concurrency} virtual users for ${durationMs / 1000} s · ordering ${target.modes.ordering} · update ${target.modes.update}`);
      return runLoad({ target: url, auth, concurrency, durationMs, offers, modes: target.modes, gateway, requestTimeoutMs, log });
    });
    log(renderLoadText(report));
    if (report.orders.errors + report.updates.errors + report.gets.errors > 0) failed = true;
  }
  return failed ? 1 : 0;
}

/** The mock gateway alone, for a partner server run by hand: each event is printed as it arrives. */
async function gatewayOnly(gateway: MockGateway, log: (line: string) => void): Promise<number> {
  log(`mock Orange gateway on ${gateway.url}; a partner server sends its events here with`);
  log(`  ORANGE_EVENT_BASE_URL=${gateway.url} ORANGE_TOKEN_URL=${gateway.tokenUrl}`);
  log(`  ORANGE_CLIENT_ID=${gateway.clientId} ORANGE_CLIENT_SECRET=${gateway.clientSecret}`);
  log("waiting for events (Ctrl-C to stop)");
  gateway.subscribe((e) => {
    const body = e.body as { type?: unknown; id?: unknown } | null;
    log(`\n${e.status} POST ${e.path} ${String(body?.type)} ${String(body?.id)}\n${JSON.stringify(e.body, null, 2)}`);
  });
  await new Promise((stop) => ["SIGINT", "SIGTERM"].forEach((signal) => process.once(signal, stop)));
  return 0;
}

/** main() with usage errors (exit 2) and failures (exit 1) reported on stderr. */
export async function cli(argv: string[]): Promise<number> {
  try {
    return await main(argv);
  } catch (err) {
    if (err instanceof UsageError || (err instanceof TypeError && "code" in err && String(err.code).startsWith("ERR_PARSE_ARGS"))) {
      process.stderr.write(`${err.message}\n\n${HELP}`);
      return 2;
    }
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 1;
  }
}

const isEntry = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntry) process.exit(await cli(process.argv.slice(2)));
