/**
 * A reference partner application: it receives the server's signed commands, keeps its own
 * seats, answers, and can be told to misbehave (refuse, answer later, be down, be slow) so the
 * server's handling of each case can be seen. Read README.md beside this file first.
 *
 *   POST /webhooks/orange   the commands (Standard Webhooks signature checked)
 *   GET|POST /control       how to behave (a test bench's knob: remove it in a real application)
 *   GET /store              the seats, the answers given, the results still to report
 *   GET /commands           every request received, with its headers
 *   GET /health             200
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { Webhook } from "standardwebhooks";
import { carryOut, Refusal, type Command } from "./commands.js";
import { Store, type PendingResult, type StoreData } from "./store.js";

export const WEBHOOK_PATH = "/webhooks/orange";
const MAX_BODY_BYTES = 10 * 1024 * 1024;
const MODES = ["ok", "refuse", "later", "down", "slow"] as const;

export type Mode = (typeof MODES)[number];

export interface Behaviour {
  /**
   * ok: carry the command out, answer 200. refuse: 409 `{reason}`. later: 202, then report the
   * result to the server after `delayMs`. down: 503 (nothing recorded). slow: carry it out, answer
   * after `delayMs`.
   */
  mode: Mode;
  /** refuse: the reason given; later with laterOutcome "failed": the failure reason. */
  reason?: string;
  /** slow: the delay of the answer; later: the delay of the result. */
  delayMs?: number;
  /** Whatever the mode, refuse (409) every command whose body contains this text. */
  refuseMentioning?: string;
  /** later: the result reported (default completed). */
  laterOutcome?: "completed" | "failed";
}

export interface PartnerAppOptions {
  /** `whsec_…` secrets; a command signed with any one of them is accepted. */
  secrets: string[];
  /** 0 picks a free port. Default 8081. */
  port?: number;
  host?: string;
  /** Folder of the JSON store; none keeps the store in memory. */
  dataDir?: string;
  /** The server's base URL, for results reported later: `{serverUrl}/admin/v1/provisioning/{id}/result`. */
  serverUrl?: string;
  /** Bearer token of that call. */
  appToken?: string;
  /** Base of the URLs given to users in `realizingResource` (default https://app.example). */
  publicUrl?: string;
  behaviour?: Behaviour;
  /** Backoff of the result call: doubles from baseMs (default 1 s) up to maxMs (default 5 min). */
  resultRetry?: { baseMs?: number; maxMs?: number };
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

export interface ReceivedCommand {
  id?: string;
  type?: string;
  headers: IncomingHttpHeaders;
  body: string;
  verified: boolean;
  /** The status answered (0 while the answer is under way). */
  status: number;
  /** Answered from the answers already given to this webhook-id. */
  replayed: boolean;
  at: string;
}

export interface ResultCall {
  commandId: string;
  attempt: number;
  body: PendingResult["result"];
  status?: number;
  error?: string;
  at: string;
}

export interface PartnerApp {
  /** e.g. http://127.0.0.1:8081 */
  url: string;
  /** The URL to configure on the server. */
  webhookUrl: string;
  received: ReceivedCommand[];
  resultCalls: ResultCall[];
  store: StoreData;
  behaviour(): Behaviour;
  /** Replaces the whole behaviour (a setting left out is cleared). Throws on a bad one. */
  setMode(behaviour: Behaviour): Behaviour;
  close(): Promise<void>;
}

class BadRequest extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

export async function startPartnerApp(options: PartnerAppOptions): Promise<PartnerApp> {
  if (options.secrets.length === 0) throw new Error("the partner application needs at least one webhook secret (whsec_…)");
  const verifiers = options.secrets.map((secret) => new Webhook(secret));
  const publicUrl = new URL(options.publicUrl ?? "https://app.example").toString().replace(/\/+$/, "");
  const serverUrl = options.serverUrl?.replace(/\/+$/, "");
  const retryBaseMs = options.resultRetry?.baseMs ?? 1_000;
  const retryMaxMs = options.resultRetry?.maxMs ?? 300_000;
  const log = options.log ?? (() => {});
  const store = await Store.open(options.dataDir);
  const received: ReceivedCommand[] = [];
  const resultCalls: ResultCall[] = [];
  const stopping = new AbortController();
  const reporting = new Map<string, Promise<void>>();
  let behaviour = checkBehaviour(options.behaviour ?? { mode: "ok" });

  function checkBehaviour(b: Behaviour): Behaviour {
    if (!MODES.includes(b.mode)) throw new BadRequest(`mode must be one of ${MODES.join(", ")}`);
    if (b.delayMs !== undefined && (!Number.isInteger(b.delayMs) || b.delayMs < 0 || b.delayMs > 600_000)) {
      throw new BadRequest("delayMs must be an integer from 0 to 600000");
    }
    if (b.reason !== undefined && (typeof b.reason !== "string" || b.reason === "")) throw new BadRequest("reason must be a non-empty string");
    if (b.refuseMentioning !== undefined && (typeof b.refuseMentioning !== "string" || b.refuseMentioning === "")) {
      throw new BadRequest("refuseMentioning must be a non-empty string");
    }
    if (b.laterOutcome !== undefined && b.laterOutcome !== "completed" && b.laterOutcome !== "failed") {
      throw new BadRequest("laterOutcome must be completed or failed");
    }
    if (b.mode === "later" && (serverUrl === undefined || options.appToken === undefined)) {
      throw new BadRequest("mode later needs the server's URL and the application's token (SERVER_URL, APP_TOKEN)");
    }
    const { mode, reason, delayMs, refuseMentioning, laterOutcome } = b;
    return { mode, reason, delayMs, refuseMentioning, laterOutcome };
  }

  /** Throws with the library's reason (missing headers, too old, no matching signature). */
  function verify(body: string, headers: IncomingHttpHeaders): void {
    const flat: Record<string, string> = {};
    for (const name of ["webhook-id", "webhook-timestamp", "webhook-signature"]) {
      const value = headers[name];
      if (typeof value === "string") flat[name] = value;
    }
    let failure: unknown;
    for (const verifier of verifiers) {
      try {
        verifier.verify(body, flat, { jsonParse: false });
        return;
      } catch (err) {
        failure ??= err;
      }
    }
    throw failure;
  }

  /** Decides the answer of a new webhook-id, applies it to the store and records it (not yet saved). */
  function decide(id: string, command: Command, b: Behaviour): { status: number; body: unknown } {
    let answer: { status: number; body: unknown };
    if (b.refuseMentioning !== undefined && JSON.stringify(command).includes(b.refuseMentioning)) {
      answer = { status: 409, body: { reason: b.reason ?? `the application refuses commands that mention "${b.refuseMentioning}"` } };
    } else if (b.mode === "refuse") {
      answer = { status: 409, body: { reason: b.reason ?? "the application refuses this command" } };
    } else if (b.mode === "later") {
      store.data.pendingResults[id] = {
        id,
        command: { type: command.type, data: command.data },
        outcome: b.laterOutcome ?? "completed",
        ...(b.reason !== undefined ? { reason: b.reason } : {}),
        dueAt: new Date(Date.now() + (b.delayMs ?? 0)).toISOString(),
      };
      answer = { status: 202, body: { status: "accepted" } };
    } else {
      try {
        answer = { status: 200, body: carryOut(store.data, command, { commandId: id, now: new Date(), publicUrl }) };
      } catch (err) {
        if (!(err instanceof Refusal)) throw err;
        answer = { status: err.status, body: { reason: err.message } };
      }
    }
    store.data.answers[id] = { ...answer, at: new Date().toISOString() };
    return answer;
  }

  async function webhook(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const entry: ReceivedCommand = { headers: req.headers, body, verified: false, status: 0, replayed: false, at: new Date().toISOString() };
    received.push(entry);
    const reply = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
      entry.status = status;
      send(res, status, payload, headers);
    };
    try {
      verify(body, req.headers);
    } catch (err) {
      log("signature refused", { error: (err as Error).message });
      return reply(401, { error: `invalid signature: ${(err as Error).message}` });
    }
    entry.verified = true;
    const id = req.headers["webhook-id"] as string;
    entry.id = id;
    const b = behaviour;
    // Down answers nothing, not even a replay: the server will try again.
    if (b.mode === "down") return reply(503, { error: "the application is down (control mode down)" });

    const given = store.data.answers[id];
    if (given !== undefined) {
      entry.replayed = true;
      await store.save(); // the first request may still be writing it
      return reply(given.status, given.body, { "webhook-replayed": "true" });
    }

    let command: Command;
    try {
      command = parseCommand(body);
    } catch (err) {
      return reply(400, { error: (err as Error).message });
    }
    entry.type = command.type;
    const answer = decide(id, command, b);
    await store.save(); // the answer is on disk before it is given
    log("command answered", { id, type: command.type, status: answer.status });
    if (b.mode === "slow" && answer.status === 200) await sleep(b.delayMs ?? 0, undefined, { signal: stopping.signal });
    reply(answer.status, answer.body);
    if (answer.status === 202) report(id);
  }

  /** Reports a 202'd command's result to the server, until it answers 2xx or 409 (already settled). */
  function report(id: string): void {
    if (reporting.has(id)) return;
    const run = (async () => {
      const pending = store.data.pendingResults[id];
      if (pending === undefined) return;
      await sleep(Math.max(0, Date.parse(pending.dueAt) - Date.now()), undefined, { signal: stopping.signal });
      if (pending.result === undefined) {
        if (pending.outcome === "failed") {
          pending.result = { outcome: "failed", reason: pending.reason ?? "the application could not carry the command out" };
        } else {
          try {
            const done = carryOut(store.data, pending.command as Command, { commandId: id, now: new Date(), publicUrl });
            pending.result = { outcome: "completed", licences: done.licences };
          } catch (err) {
            if (!(err instanceof Refusal)) throw err;
            pending.result = { outcome: "failed", reason: err.message };
          }
        }
        await store.save(); // the work and its result together: a restart reports the same result
      }
      for (let attempt = 1; ; attempt++) {
        const call: ResultCall = { commandId: id, attempt, body: pending.result, at: new Date().toISOString() };
        resultCalls.push(call);
        try {
          const res = await fetch(`${serverUrl}/admin/v1/provisioning/${encodeURIComponent(id)}/result`, {
            method: "POST",
            headers: { authorization: `Bearer ${options.appToken}`, "content-type": "application/json" },
            body: JSON.stringify(pending.result),
            signal: AbortSignal.any([stopping.signal, AbortSignal.timeout(10_000)]),
          });
          await res.arrayBuffer();
          call.status = res.status;
          if ((res.status >= 200 && res.status < 300) || res.status === 409) break;
        } catch (err) {
          if (stopping.signal.aborted) throw err;
          call.error = (err as Error).message;
        }
        const delay = Math.min(retryMaxMs, retryBaseMs * 2 ** (attempt - 1));
        log("result not taken, trying again", { id, attempt, status: call.status, error: call.error, delayMs: delay });
        await sleep(delay * (0.8 + Math.random() * 0.4), undefined, { signal: stopping.signal });
      }
      delete store.data.pendingResults[id];
      await store.save();
      log("result reported", { id, outcome: pending.result.outcome });
    })()
      .catch((err: unknown) => {
        if (!stopping.signal.aborted) log("reporting a result failed", { id, error: (err as Error).message });
      })
      .finally(() => reporting.delete(id));
    reporting.set(id, run);
  }

  async function control(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method === "POST") {
      let input: unknown;
      try {
        input = JSON.parse(await readBody(req));
      } catch {
        throw new BadRequest("the body must be JSON such as {\"mode\": \"ok\"}");
      }
      behaviour = checkBehaviour(input as Behaviour);
      log("behaviour set", { ...behaviour });
    }
    send(res, 200, behaviour);
  }

  async function route(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (req.method === "POST" && path === WEBHOOK_PATH) return webhook(req, res);
    if (path === "/control" && (req.method === "GET" || req.method === "POST")) return control(req, res);
    if (req.method === "GET" && path === "/store") return send(res, 200, store.data);
    if (req.method === "GET" && path === "/commands") return send(res, 200, received);
    if (req.method === "GET" && path === "/health") return send(res, 200, { status: "ok" });
    send(res, 404, { error: "not found" });
  }

  const server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    route(req, res, path).catch((err: unknown) => {
      if (res.headersSent || res.destroyed) return;
      if (err instanceof BadRequest) return send(res, err.status, { error: err.message });
      log("request failed", { path, error: (err as Error).message });
      send(res, 500, { error: "internal error" });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 8081, options.host ?? "127.0.0.1", resolve);
  });
  const address = server.address() as AddressInfo;
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;

  // Results still to report when the application stopped last time.
  for (const id of Object.keys(store.data.pendingResults)) report(id);

  return {
    url,
    webhookUrl: `${url}${WEBHOOK_PATH}`,
    received,
    resultCalls,
    store: store.data,
    behaviour: () => behaviour,
    setMode: (b) => (behaviour = checkBehaviour(b)),
    async close() {
      if (stopping.signal.aborted) return;
      stopping.abort();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await Promise.all(reporting.values());
      await store.save();
    },
  };
}

function parseCommand(body: string): Command {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new BadRequest("the body is not JSON");
  }
  const { type, timestamp, data } = (json ?? {}) as Record<string, unknown>;
  if (typeof type !== "string" || type === "") throw new BadRequest("type must be a non-empty string");
  const command: Command = { type, data: typeof data === "object" && data !== null ? (data as Record<string, unknown>) : {} };
  if (typeof timestamp === "string") command.timestamp = timestamp;
  return command;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      // Past the limit the rest is read and dropped, so that the 413 can still be answered.
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on("end", () => {
      if (size > MAX_BODY_BYTES) reject(new BadRequest(`the body is larger than ${MAX_BODY_BYTES} bytes`, 413));
      else resolve(Buffer.concat(chunks).toString("utf8"));
    });
    req.on("error", reject);
  });
}

function send(res: ServerResponse, status: number, payload: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "application/json", ...headers }).end(JSON.stringify(payload));
}
