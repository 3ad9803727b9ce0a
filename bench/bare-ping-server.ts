// Baseline of the GET /ping figure: a bare node:http server answering the same bytes as the
// real server's /ping (`{"status":"ok"}`, same content-type, same keep-alive timeout as
// Fastify's default 72 s so that even the Keep-Alive header matches). Started by bench/run.ts
// as a child process, like the real server, so that it never shares the load generator's thread.

import http from "node:http";

const body = Buffer.from(JSON.stringify({ status: "ok" }));
const headers = { "content-type": "application/json; charset=utf-8", "content-length": String(body.length) };

const server = http.createServer((_req, res) => {
  res.writeHead(200, headers);
  res.end(body);
});
server.keepAliveTimeout = 72_000;
server.listen(Number(process.env.PORT), process.env.HOST ?? "127.0.0.1");

process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
