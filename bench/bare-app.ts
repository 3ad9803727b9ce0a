// The partner's application of the webhook benchmark (bench/provisioning.ts): a bare node:http
// server that reads each command whole and answers 200 `{}` at once, without checking the
// signature or keeping anything, so that the figures are the server's cost of the provisioning
// stage and not an application's. `GET /count` answers how many commands it received, and how
// many distinct webhook-ids (a command sent twice would show). Started by
// bench/run.ts as a child process, like the server, so that its CPU is measured apart.

import http from "node:http";

const body = Buffer.from("{}");
const headers = { "content-type": "application/json", "content-length": String(body.length) };
let commands = 0;
const ids = new Set<string>();

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/count") {
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ commands, distinct: ids.size }));
    return;
  }
  req.resume();
  req.on("end", () => {
    commands++;
    ids.add(String(req.headers["webhook-id"]));
    res.writeHead(200, headers);
    res.end(body);
  });
});
server.keepAliveTimeout = 72_000;
server.listen(Number(process.env.PORT), process.env.HOST ?? "127.0.0.1");

process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
