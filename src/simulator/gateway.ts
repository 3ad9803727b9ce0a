/**
 * A mock of Orange's API gateway on a real port (loopback by default): the simulator's
 * (`npm run simulate`), the tests' and the benchmark's stand-in for Orange.
 *
 *   const gw = await startMockGateway({ expiresIn: 3600 });
 *   // token URL: gw.tokenUrl (checks Basic gw.clientId:gw.clientSecret and grant_type)
 *   // events:    POST {gw.url}/{offer}/productordering/v2/event and /{offer}/userservice/v2/event
 *   //            (check the bearer: issued by this gateway, not expired, not revoked); with
 *   //            `offer: "mba2"`, an event under another offer is recorded and answered 404
 *   gw.scriptEvents(500, 2);      // the next 2 event calls answer 500, then normal behaviour
 *   gw.scriptEvents("hang");      // the next event call never gets an answer
 *   gw.scriptToken(500);          // the next token request answers 500
 *   gw.received                   // every event call: api, offer, headers, body, token, status
 *   gw.delivered()                // the events answered 2xx, in arrival order
 *   gw.tokenRequests              // token requests received (good or bad)
 *   await gw.close();
 *
 * Every answer carries an `X-OAPI-Request-Id` header (`mock-<n>`), recorded with each call.
 * Tokens expire on the gateway's own clock (`now`, real time by default).
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A scripted answer: a status (401 → Orange's 401 body; 429 → `Retry-After: 1`; 400 → an Orange
 * error body), `"hang"` (never answer; the socket stays open until the client gives up or the
 * gateway closes), or a full answer.
 */
export type ScriptedAnswer = number | "hang" | { status: number; headers?: Record<string, string>; body?: unknown };

export type EventApi = "productordering" | "userservice";

export interface ReceivedEvent {
  api: EventApi;
  offer: string;
  path: string;
  headers: IncomingHttpHeaders;
  /** The parsed JSON body (the raw text when it is not JSON). */
  body: unknown;
  /** The body as received. */
  text: string;
  /** The bearer token sent, if any. */
  token: string | undefined;
  /** The status answered, or "hang". */
  status: number | "hang";
  requestId: string;
  /** Arrival time (Date.now()). */
  at: number;
}

export interface TokenRequest {
  headers: IncomingHttpHeaders;
  body: string;
  /** The status answered, or "hang"; 200 when a token was issued. */
  status: number | "hang";
  /** The token issued, when one was. */
  token: string | undefined;
}

export interface MockGatewayOptions {
  clientId?: string;
  clientSecret?: string;
  /** `expires_in` of issued tokens, in seconds (default 3600). Can be changed later on the gateway. */
  expiresIn?: number;
  /** The gateway's clock, in ms, for token expiry (default Date.now). */
  now?: () => number;
  /** Interface to listen on (default 127.0.0.1). */
  host?: string;
  /** Port to listen on (default: any free port). */
  port?: number;
  /**
   * The only offer segment served (`mba2` | `mba2-beta`): an event posted under another one is
   * recorded and answered 404, as Orange's gateway answers a path it does not serve. Default: any.
   */
  offer?: string;
}

export interface MockGateway {
  /** `http://127.0.0.1:<port>`: the event base URL. */
  readonly url: string;
  /** `{url}/oauth/v3/token`. */
  readonly tokenUrl: string;
  readonly clientId: string;
  readonly clientSecret: string;
  /** The offer segment served, when the gateway serves only one. */
  readonly offer: string | undefined;
  /** `expires_in` of the next tokens issued, in seconds. */
  expiresIn: number;
  /** Token requests received, accepted or not. */
  readonly tokenRequests: number;
  readonly tokenLog: readonly TokenRequest[];
  /** Every call to an event endpoint, in arrival order, whatever was answered. */
  readonly received: readonly ReceivedEvent[];
  /** The events answered 2xx, in arrival order. */
  delivered(): ReceivedEvent[];
  /** The next `times` event calls (either API) get `answer` instead of the normal behaviour. */
  scriptEvents(answer: ScriptedAnswer, times?: number): void;
  /** The next `times` token requests get `answer` instead of a token. */
  scriptToken(answer: ScriptedAnswer, times?: number): void;
  /** Every token issued so far becomes invalid (event calls with it get 401). */
  revokeTokens(): void;
  /** Calls `listener` on every event call from now on, once it is answered; returns the unsubscribe. */
  subscribe(listener: (event: ReceivedEvent) => void): () => void;
  /** Forgets scripts, tokens and recordings. */
  reset(): void;
  /** Stops listening and drops every connection (hanging ones included). */
  close(): Promise<void>;
}

/** Orange error codes (contract section 7) used in the bodies of scripted answers. */
const ORANGE_CODES: Record<number, number> = { 403: 50, 404: 60, 405: 61, 406: 62, 409: 63, 413: 64, 415: 68, 503: 5 };

const EVENT_PATH = /^\/([^/]+)\/(productordering|userservice)\/v2\/event$/;
const TOKEN_PATH = "/oauth/v3/token";

export async function startMockGateway(options: MockGatewayOptions = {}): Promise<MockGateway> {
  const clientId = options.clientId ?? "partner-client-id";
  const clientSecret = options.clientSecret ?? "partner-client-secret";
  const now = options.now ?? Date.now;
  const expectedAuthorization = `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString("base64")}`;

  let expiresIn = options.expiresIn ?? 3600;
  let tokens = new Map<string, number>(); // token → expiry (ms)
  let tokenCounter = 0;
  let requestCounter = 0;
  let eventScript: ScriptedAnswer[] = [];
  let tokenScript: ScriptedAnswer[] = [];
  let tokenLog: TokenRequest[] = [];
  let received: ReceivedEvent[] = [];
  const listeners = new Set<(event: ReceivedEvent) => void>();

  function answer(res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
    for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
    if (body === undefined) {
      res.writeHead(status).end();
      return;
    }
    const text = typeof body === "string" ? body : JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json" }).end(text);
  }

  function orangeError(code: number, message: string, description: string) {
    return { code, message, description };
  }

  /** Plays a scripted answer; returns the status recorded. */
  function play(res: ServerResponse, scripted: ScriptedAnswer): number | "hang" {
    if (scripted === "hang") return "hang";
    if (typeof scripted === "object") {
      answer(res, scripted.status, scripted.body, scripted.headers);
      return scripted.status;
    }
    switch (scripted) {
      case 401:
        answer(res, 401, orangeError(42, "Expired credentials", "the access token expired"), {
          "www-authenticate": 'Bearer error="invalid_token"',
        });
        break;
      case 429:
        answer(res, 429, orangeError(53, "Too many requests", "rate limit exceeded"), { "retry-after": "1" });
        break;
      case 400:
        answer(res, 400, orangeError(24, "Invalid body field", "resource.state: unexpected value"));
        break;
      default:
        if (scripted >= 200 && scripted < 300) answer(res, scripted);
        else answer(res, scripted, orangeError(ORANGE_CODES[scripted] ?? 1, `HTTP ${scripted}`, "scripted answer"));
    }
    return scripted;
  }

  function handleToken(req: IncomingMessage, res: ServerResponse, body: string): void {
    const entry: TokenRequest = { headers: req.headers, body, status: 200, token: undefined };
    tokenLog.push(entry);
    const scripted = tokenScript.shift();
    if (scripted !== undefined) {
      entry.status = play(res, scripted);
      return;
    }
    const fail = (status: number, error: string, description: string) => {
      entry.status = status;
      answer(res, status, { error, error_description: description });
    };
    if (req.headers.authorization !== expectedAuthorization) {
      return fail(401, "invalid_client", "client authentication failed");
    }
    if (!req.headers["content-type"]?.startsWith("application/x-www-form-urlencoded")) {
      return fail(400, "invalid_request", "content type must be application/x-www-form-urlencoded");
    }
    if (new URLSearchParams(body).get("grant_type") !== "client_credentials") {
      return fail(400, "unsupported_grant_type", "grant_type must be client_credentials");
    }
    const token = `mock-token-${++tokenCounter}`;
    tokens.set(token, now() + expiresIn * 1000);
    entry.token = token;
    answer(res, 200, { token_type: "Bearer", access_token: token, expires_in: expiresIn });
  }

  function handleEvent(req: IncomingMessage, res: ServerResponse, body: string, match: RegExpExecArray, requestId: string): void {
    const auth = req.headers.authorization;
    const token = auth?.startsWith("Bearer ") ? auth.slice("Bearer ".length) : undefined;
    let parsed: unknown = body;
    let isJson = true;
    try {
      parsed = JSON.parse(body);
    } catch {
      isJson = false;
    }
    const entry: ReceivedEvent = {
      api: match[2] as EventApi,
      offer: match[1] ?? "",
      path: req.url ?? "",
      headers: req.headers,
      body: parsed,
      text: body,
      token,
      status: 201,
      requestId,
      at: Date.now(),
    };
    received.push(entry);
    // Listeners see the event once its answer is decided (below, synchronously).
    queueMicrotask(() => {
      for (const listener of listeners) listener(entry);
    });

    const reject = (status: number, code: number, message: string, description: string, headers?: Record<string, string>) => {
      entry.status = status;
      answer(res, status, orangeError(code, message, description), headers);
    };
    // Routing comes before scripts and credentials: the wrong environment is not an event API at all.
    if (options.offer !== undefined && entry.offer !== options.offer) {
      return reject(404, 60, "Resource not found", `no event API at ${entry.path}: events go to /${options.offer}/${entry.api}/v2/event`);
    }
    const scripted = eventScript.shift();
    if (scripted !== undefined) {
      entry.status = play(res, scripted);
      return;
    }
    const challenge = { "www-authenticate": 'Bearer error="invalid_token"' };
    if (token === undefined) return reject(401, 40, "Missing credentials", "no bearer token", challenge);
    const expiry = tokens.get(token);
    if (expiry === undefined) return reject(401, 41, "Invalid credentials", "unknown access token", challenge);
    if (expiry <= now()) return reject(401, 42, "Expired credentials", "the access token expired", challenge);
    if (!req.headers.accept?.includes("application/json")) {
      return reject(406, 62, "Not acceptable", "Accept must allow application/json");
    }
    if (!req.headers["content-type"]?.startsWith("application/json")) {
      return reject(415, 68, "Unsupported media type", "Content-Type must be application/json");
    }
    if (!isJson) return reject(400, 22, "Invalid body", "the body is not valid JSON");
    answer(res, 201);
  }

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const requestId = `mock-${++requestCounter}`;
      res.setHeader("x-oapi-request-id", requestId);
      const path = (req.url ?? "").split("?")[0] ?? "";
      if (req.method === "POST" && path === TOKEN_PATH) return handleToken(req, res, body);
      const match = EVENT_PATH.exec(path);
      if (req.method === "POST" && match) return handleEvent(req, res, body, match, requestId);
      answer(res, 404, orangeError(60, "Resource not found", `${req.method} ${path}`));
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const host = options.host === undefined || options.host === "0.0.0.0" || options.host === "::" ? "127.0.0.1" : options.host;
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;

  return {
    url,
    tokenUrl: `${url}${TOKEN_PATH}`,
    clientId,
    clientSecret,
    offer: options.offer,
    get expiresIn() {
      return expiresIn;
    },
    set expiresIn(seconds: number) {
      expiresIn = seconds;
    },
    get tokenRequests() {
      return tokenLog.length;
    },
    get tokenLog() {
      return tokenLog;
    },
    get received() {
      return received;
    },
    delivered: () => received.filter((e) => typeof e.status === "number" && e.status >= 200 && e.status < 300),
    scriptEvents(scripted, times = 1) {
      for (let i = 0; i < times; i++) eventScript.push(scripted);
    },
    scriptToken(scripted, times = 1) {
      for (let i = 0; i < times; i++) tokenScript.push(scripted);
    },
    revokeTokens() {
      tokens = new Map();
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    reset() {
      tokens = new Map();
      eventScript = [];
      tokenScript = [];
      tokenLog = [];
      received = [];
    },
    close() {
      return new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
    },
  };
}
