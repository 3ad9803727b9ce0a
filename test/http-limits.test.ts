import { connect, type Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { setTimeout as delay } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AUTH, createTestApp, type TestApp } from "./support/app.js";
import { uc2Request } from "./support/examples.js";

/**
 * Inbound limits and Node-level answers over a real port (issue 8, items 7 and 9): the server
 * under Fastify is ours (for the /ping fast path), so its timeouts and connection cap are set
 * here; and whatever Node would answer by itself (a request it cannot parse, headers too large,
 * a request too slow…) carries Orange's error body, its content type and a request id.
 */

const HEADERS_TIMEOUT_MS = 1000;
const REQUEST_TIMEOUT_MS = 1500;
const KEEP_ALIVE_TIMEOUT_MS = 300;
/** How long a test client keeps dribbling before it concludes it was never cut. */
const GIVE_UP_MS = 15_000;

interface Exchange {
  /** Everything the server sent. */
  text: string;
  /** ms from the connection to its close by the server, or undefined when it stayed open. */
  closedAfterMs?: number;
}

interface ParsedAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

function parseAnswer(text: string): ParsedAnswer {
  const end = text.indexOf("\r\n\r\n");
  expect(end, `an HTTP answer, got ${JSON.stringify(text.slice(0, 200))}`).toBeGreaterThan(0);
  const [statusLine, ...lines] = text.slice(0, end).split("\r\n");
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(":");
    headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status: Number(statusLine!.split(" ")[1]), headers, body: text.slice(end + 4) };
}

/** Checks an answer in Orange's error format and returns its body. */
function expectOrangeError(text: string, status: number, code: number) {
  const answer = parseAnswer(text);
  expect(answer.status, text).toBe(status);
  expect(answer.headers["content-type"]).toBe("application/json; charset=utf-8");
  expect(answer.headers["x-request-id"]).toMatch(/^req_[0-9a-z]{20}$/);
  expect(Number(answer.headers["content-length"])).toBe(Buffer.byteLength(answer.body));
  const body = JSON.parse(answer.body) as { code: number; message: string; description: string };
  expect(Object.keys(body).sort()).toEqual(["code", "description", "message"]);
  expect(body.code, answer.body).toBe(code);
  expect(body.message.length).toBeGreaterThan(0);
  expect(body.description.length).toBeGreaterThan(0);
  return body;
}

/**
 * Opens a connection, lets `talk` write to it, and collects what the server sends until it
 * closes the connection or GIVE_UP_MS pass.
 */
function exchange(port: number, talk: (socket: Socket, closed: () => boolean) => Promise<void> | void): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    const started = Date.now();
    let text = "";
    let closed = false;
    const giveUp = setTimeout(() => {
      socket.destroy();
      resolve({ text });
    }, GIVE_UP_MS);
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => (text += chunk));
    socket.on("error", () => undefined); // a reset after the answer is an answer too
    socket.on("close", () => {
      closed = true;
      clearTimeout(giveUp);
      resolve({ text, closedAfterMs: Date.now() - started });
    });
    socket.on("connect", () => {
      Promise.resolve(talk(socket, () => closed)).catch(reject);
    });
  });
}

/** Writes `text` one byte every `everyMs`, until done or the server closed the connection. */
async function dribble(socket: Socket, closed: () => boolean, text: string, everyMs = 100) {
  for (const char of text) {
    if (closed() || socket.destroyed) return;
    socket.write(char);
    await delay(everyMs);
  }
}

async function listen(t: TestApp): Promise<number> {
  await t.app.listen({ port: 0, host: "127.0.0.1" });
  return (t.app.server.address() as AddressInfo).port;
}

let t: TestApp;
let port: number;

beforeAll(async () => {
  t = await createTestApp({
    env: {
      HTTP_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
      HTTP_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
      HTTP_KEEP_ALIVE_TIMEOUT_MS: String(KEEP_ALIVE_TIMEOUT_MS),
    },
  });
  port = await listen(t);
});
afterAll(async () => t?.close());

describe("slow clients are cut after the configured timeouts", () => {
  it("headers sent byte by byte: 408 in Orange's format once HTTP_HEADERS_TIMEOUT_MS has passed", async () => {
    const headers = `GET /userservice/v2/userService?productRefId=fl_x HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH.authorization}\r\n${"X-Slow: y\r\n".repeat(50)}\r\n`;
    const res = await exchange(port, (socket, closed) => dribble(socket, closed, headers));
    expect(res.closedAfterMs, "the connection was never cut").toBeDefined();
    expect(res.closedAfterMs!).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 50);
    const body = expectOrangeError(res.text, 408, 65);
    expect(body.description).toBe(
      `the request was not received in time: headers within ${HEADERS_TIMEOUT_MS} ms, the whole request within ${REQUEST_TIMEOUT_MS} ms`,
    );
  });

  it("a body sent byte by byte: 408 once HTTP_REQUEST_TIMEOUT_MS has passed, and nothing stored", async () => {
    const body = JSON.stringify(uc2Request());
    const head =
      `POST /productordering/v2/productOrder HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH.authorization}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n`;
    const res = await exchange(port, async (socket, closed) => {
      socket.write(head);
      await dribble(socket, closed, body);
    });
    expect(res.closedAfterMs, "the connection was never cut").toBeDefined();
    expect(res.closedAfterMs!).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50);
    expectOrangeError(res.text, 408, 65);
    expect(await t.db.productOrder.count()).toBe(0);
  });

  it("an idle keep-alive connection is closed after HTTP_KEEP_ALIVE_TIMEOUT_MS", async () => {
    let answeredAt = 0;
    const res = await exchange(port, (socket) => {
      socket.once("data", () => (answeredAt = Date.now()));
      socket.write("GET /ping HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
    });
    expect(parseAnswer(res.text).status).toBe(200);
    expect(res.closedAfterMs, "the idle connection stayed open").toBeDefined();
    // Far below Node's 5 s default, far above the configured 300 ms.
    expect(res.closedAfterMs!).toBeLessThan(4000);
    expect(answeredAt).toBeGreaterThan(0);
  });
});

describe("HTTP_MAX_CONNECTIONS", () => {
  let capped: TestApp;
  let cappedPort: number;
  beforeAll(async () => {
    capped = await createTestApp({ env: { HTTP_MAX_CONNECTIONS: "2" } });
    cappedPort = await listen(capped);
  });
  afterAll(async () => capped?.close());

  function open(): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = connect(cappedPort, "127.0.0.1", () => resolve(socket));
      socket.on("error", reject);
    });
  }

  /** A ping over an open keep-alive connection: the answer, or "closed" when the server closed it. */
  function ping(socket: Socket): Promise<string> {
    return new Promise((resolve) => {
      let text = "";
      const onData = (chunk: Buffer) => {
        text += chunk.toString();
        if (text.includes('{"status":"ok"}')) done(text);
      };
      const done = (result: string) => {
        socket.off("data", onData);
        resolve(result);
      };
      socket.on("data", onData);
      socket.once("close", () => done("closed"));
      socket.once("error", () => done("closed"));
      socket.write("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n");
    });
  }

  it("closes connections beyond the cap at once and serves again when one ends", async () => {
    const a = await open();
    const b = await open();
    expect(await ping(a)).toContain("200 OK");
    expect(await ping(b)).toContain("200 OK");
    const c = await open();
    expect(await ping(c)).toBe("closed");
    a.destroy();
    await delay(100);
    const d = await open();
    expect(await ping(d)).toContain("200 OK");
    b.destroy();
    d.destroy();
  });
});

describe("what Node answers by itself is in Orange's format", () => {
  async function raw(request: string | Buffer): Promise<string> {
    const res = await exchange(port, (socket) => {
      socket.write(request);
    });
    return res.text;
  }

  it("400 code 20 for a request line that is not HTTP", async () => {
    const body = expectOrangeError(await raw("HELLO WORLD\r\n\r\n"), 400, 20);
    expect(body.description).toMatch(/^the request line is not valid HTTP\/1\.1: /);
  });

  it("400 code 26 for a header with a forbidden character", async () => {
    const body = expectOrangeError(await raw("GET /ping HTTP/1.1\r\nHost: x\r\nX-Bad: a\u0001b\r\n\r\n"), 400, 26);
    expect(body.description).toMatch(/^the headers are not valid HTTP\/1\.1: /);
  });

  it("400 code 26 for both Content-Length and Transfer-Encoding", async () => {
    const request =
      "POST /productordering/v2/productOrder HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}";
    expectOrangeError(await raw(request), 400, 26);
  });

  it("431 code 26 for headers over Node's limit, without echoing them", async () => {
    const text = await raw(`GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`);
    const body = expectOrangeError(text, 431, 26);
    expect(body.description).toBe("the request line and headers exceed 16384 bytes");
    expect(text).not.toContain("aaaa");
  });

  it("413 code 64 for chunk extensions over Node's limit", async () => {
    const request =
      `POST /productordering/v2/productOrder HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH.authorization}\r\n` +
      `Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2;${"e".repeat(20_000)}\r\n{}\r\n0\r\n\r\n`;
    expectOrangeError(await raw(request), 413, 64);
  });

  it("400 code 25 for an HTTP/1.1 request without Host", async () => {
    const body = expectOrangeError(await raw("GET /ping HTTP/1.1\r\n\r\n"), 400, 25);
    expect(body.description).toBe("an HTTP/1.1 request must carry a Host header");
  });

  it("417 code 26 for an Expect other than 100-continue", async () => {
    const body = expectOrangeError(await raw("GET /ping HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n"), 417, 26);
    expect(body.description).toContain("Expect: something-else is not supported");
  });

  it("405 code 61 for CONNECT", async () => {
    expectOrangeError(await raw("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"), 405, 61);
  });

  it("400 code 20 for a path that is not valid percent-encoded UTF-8", async () => {
    const text = await raw(`GET /userservice/v2/userService/%E0%A4%A HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH.authorization}\r\nConnection: close\r\n\r\n`);
    expectOrangeError(text, 400, 20);
  });

  it("414 code 20 for a path parameter longer than Fastify's limit", async () => {
    const text = await raw(`GET /userservice/v2/userService/${"a".repeat(150)} HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH.authorization}\r\nConnection: close\r\n\r\n`);
    expectOrangeError(text, 414, 20);
  });
});

describe("a request arriving while the server closes", () => {
  it("gets 503 code 5 in Orange's format", async () => {
    const closing = await createTestApp();
    const closingPort = await listen(closing);
    const body = JSON.stringify(uc2Request());
    const res = await exchange(closingPort, async (socket) => {
      // A first request keeps the connection busy (its body is not complete) while the server
      // starts closing; a second one then arrives on the same connection.
      socket.write(
        `POST /productordering/v2/productOrder HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH.authorization}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body.slice(0, 10)}`,
      );
      await delay(200);
      const closed = closing.close();
      await delay(200);
      socket.write(body.slice(10));
      await delay(500);
      socket.write("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n");
      await closed;
    });
    const [first, second] = res.text.split(/(?=HTTP\/1\.1 )/);
    expect(parseAnswer(first!).status).toBe(201);
    expectOrangeError(second!, 503, 5);
  });
});
