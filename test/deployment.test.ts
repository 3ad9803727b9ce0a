import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";

// No Docker engine runs on the development and CI machines, so the deployment files are checked
// as data: what a compose or docker build would read.
const root = new URL("../", import.meta.url);
const read = (file: string) => readFileSync(new URL(file, root), "utf8");

interface Service {
  restart?: string;
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
}

describe("deployment files", () => {
  const compose = parse(read("docker-compose.yml"), { merge: true }) as { services: Record<string, Service> };

  it("restarts every service of docker-compose.yml on its own", () => {
    for (const [name, service] of Object.entries(compose.services)) {
      expect(service.restart, `services.${name}.restart`).toBe("unless-stopped");
    }
  });

  it("runs the HTTP API and the worker as separate services on the same database", () => {
    const { server, worker } = compose.services;
    expect(server?.environment?.ROLE).toBe("api");
    expect(worker?.environment?.ROLE).toBe("worker");
    expect(worker?.environment?.DATABASE_URL).toBe(server?.environment?.DATABASE_URL);
    expect(worker?.depends_on?.postgres?.condition).toBe("service_healthy");
  });

  it("refuses to start without Orange's client credentials, an inbound credential and ADMIN_TOKEN", () => {
    const { server, worker } = compose.services;
    const required = (value: string | undefined) => /^\$\{[A-Z_]+:\?.+\}$/.test(value ?? "");
    for (const [name, env] of [["server", server?.environment], ["worker", worker?.environment]] as const) {
      expect(required(env?.ORANGE_CLIENT_ID), `${name} ORANGE_CLIENT_ID`).toBe(true);
      expect(required(env?.ORANGE_CLIENT_SECRET), `${name} ORANGE_CLIENT_SECRET`).toBe(true);
    }
    expect(required(server?.environment?.ADMIN_TOKEN)).toBe(true);
    expect(required(server?.environment?.INBOUND_BEARER_TOKEN)).toBe(true);
  });

  it("passes the partner application's settings to the API and the worker alike (both send its commands)", () => {
    const { server, worker } = compose.services;
    for (const key of ["PROVISIONING_MODE", "PROVISIONING_URL", "PROVISIONING_SECRET", "APP_TOKEN"]) {
      expect(server?.environment?.[key], `server ${key}`).toMatch(new RegExp(`^\\$\\{${key}:-`));
      expect(worker?.environment?.[key], `worker ${key}`).toBe(server?.environment?.[key]);
    }
    expect(server?.environment?.PROVISIONING_MODE).toBe("${PROVISIONING_MODE:-none}");
  });

  it("keeps .env files out of the image, and builds on Node 24", () => {
    const ignored = read(".dockerignore").split("\n").map((l) => l.trim());
    expect(ignored).toContain(".env");
    expect(read("Dockerfile")).toMatch(/^FROM node:24-/m);
  });
});
