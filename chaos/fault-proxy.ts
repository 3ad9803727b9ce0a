/**
 * A loopback HTTP proxy that breaks the calls it relays on demand: put between the server and
 * one of its peers (the mock of Orange's gateway, the partner's application) so that the peer
 * itself stays a faithful record of what really reached it.
 *
 *   none      relay
 *   status    answer this status (and headers, body) without relaying
 *   hang      neither relay nor answer: the caller's own timeout ends the call
 *   slow      relay at once, hold the peer's answer back `ms`: the work is done on the peer's
 *             side and the caller does not know yet (a kill or a timeout meanwhile loses the answer)
 *
 * Only the calls `affects(path)` selects are broken; the others (the token endpoint, say) are
 * always relayed. Every call is recorded with what the proxy did.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { request } from "undici";

export type Fault =
  | { kind: "none" }
  | { kind: "status"; status: number; headers?: Record<string, string>; body?: unknown }
  | { kind: "hang" }
  | { kind: "slow"; ms: number };

export interface ProxiedCall {
  method: string;
  path: string;
  body: string;
  /** What the proxy did: "none" (relayed), "status", "hang", "slow". */
  fault: Fault["kind"];
  /** The status the caller got; "hang" when it got none; "gone" when it left before the answer. */
  status?: number | "hang" | "gone";
  /** The status the peer answered, when the call was relayed. */
  upstreamStatus?: number;
  at: number;
  answeredAt?: number;
}

export interface FaultProxy {
  readonly url: string;
  readonly calls: readonly ProxiedCall[];
  fault: Fault;
  /** Calls whose answer is held back or never coming, right now. */
  holding(): number;
  close(): Promise<void>;
}

const HOP_BY_HOP = new Set(["connection", "keep-alive", "transfer-encoding", "host", "content-length", "upgrade", "te", "trailer"]);

export async function startFaultProxy(upstream: string, affects: (path: string) => boolean = () => true): Promise<FaultProxy> {
  const calls: ProxiedCall[] = [];
  let fault: Fault = { kind: "none" };
  let holding = 0;

  function finish(call: ProxiedCall, res: ServerResponse, status: number, headers: Record<string, string>, body: Buffer | string) {
    if (res.destroyed || res.writableEnded) {
      call.status = "gone";
      return;
    }
    call.status = status;
    call.answeredAt = Date.now();
    res.writeHead(status, { ...headers, "content-length": String(Buffer.byteLength(body)) }).end(body);
  }

  async function relay(req: IncomingMessage, body: Buffer): Promise<{ status: number; headers: Record<string, string>; body: Buffer }> {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (!HOP_BY_HOP.has(name) && typeof value === "string") headers[name] = value;
    }
    const res = await request(`${upstream}${req.url ?? "/"}`, {
      method: req.method as "POST",
      headers,
      body: body.length > 0 ? body : null,
      headersTimeout: 60_000,
      bodyTimeout: 60_000,
    });
    const out: Record<string, string> = {};
    for (const [name, value] of Object.entries(res.headers)) {
      if (!HOP_BY_HOP.has(name) && typeof value === "string") out[name] = value;
    }
    return { status: res.statusCode, headers: out, body: Buffer.from(await res.body.arrayBuffer()) };
  }

  async function handle(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const active = affects(path) ? fault : ({ kind: "none" } as const);
    const call: ProxiedCall = { method: req.method ?? "", path, body: body.toString("utf8"), fault: active.kind, at: Date.now() };
    calls.push(call);
    switch (active.kind) {
      case "status": {
        const payload = active.body === undefined ? "" : JSON.stringify(active.body);
        const headers = { ...(active.body === undefined ? {} : { "content-type": "application/json" }), ...active.headers };
        return finish(call, res, active.status, headers, payload);
      }
      case "hang": {
        call.status = "hang";
        holding++;
        res.once("close", () => holding--);
        return;
      }
      case "none":
      case "slow": {
        const answer = await relay(req, body);
        call.upstreamStatus = answer.status;
        if (active.kind === "slow") {
          holding++;
          await new Promise((resolve) => setTimeout(resolve, active.ms));
          holding--;
        }
        return finish(call, res, answer.status, answer.headers, answer.body);
      }
    }
  }

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      handle(req, res, Buffer.concat(chunks)).catch((err: unknown) => {
        if (!res.headersSent && !res.destroyed) res.writeHead(502).end(String(err));
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    get fault() {
      return fault;
    },
    set fault(next: Fault) {
      fault = next;
    },
    holding: () => holding,
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
