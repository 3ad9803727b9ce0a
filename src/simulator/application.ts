/**
 * The mock partner application of a `PROVISIONING_MODE=webhook` run: the reference application of
 * examples/partner-app (`startPartnerApp`), hosted in this process. The target sends it its
 * signed commands; scenarios set how it behaves (`app:` steps: refuse, answer later, be down…)
 * and check what it received (`application:` steps), one record per request of the target.
 *
 * The application checks each signature with the `standardwebhooks` library, as any partner's
 * application would; the simulator reads its verdict, it does not sign or verify anything itself.
 */
import { randomBytes } from "node:crypto";
import { startPartnerApp, type Behaviour, type PartnerApp } from "../../examples/partner-app/app.js";

export type AppBehaviour = Behaviour;

/** One POST the application received. */
export interface Delivery {
  webhookId?: string;
  /** Its signature was verified with the application's secret. */
  verified: boolean;
  /** What the application answered (0 while the answer is under way). */
  status: number;
  /** Answered from the answer already given to this webhook-id (nothing applied again). */
  replayed: boolean;
  body: string;
  at: string;
}

/**
 * Everything the application received for one request of the target (`data.request.id` of the
 * commands; a delivery whose body does not say is a record of its own), as `application:` steps
 * see it (FORMAT.md).
 */
export interface CommandRecord {
  /** The target's request id (`data.request.id`), if the body says. */
  requestId?: string;
  /** The first delivery's `webhook-id`, and every distinct one (one, for a correct target). */
  webhookId?: string;
  webhookIds: string[];
  /** Every delivery of a webhook-id carried the same bytes. */
  sameBody: boolean;
  type?: string;
  /** The command (the first delivery's body, parsed). */
  body: unknown;
  /** How many times it was sent, and what the application answered each time, in order. */
  deliveries: number;
  statuses: number[];
  /** Deliveries the application carried out (answered 2xx afresh, not from an answer already given). */
  applied: number;
  /** Every delivery's signature was verified. */
  signed: boolean;
  /** The results the application reported later (after a 202) through the target's result route. */
  results: { attempt: number; outcome: string; reason?: string; status?: number; error?: string }[];
}

export interface MockApplication {
  /** e.g. http://127.0.0.1:8081 */
  url: string;
  /** Where the target sends its commands (its PROVISIONING_URL). */
  webhookUrl: string;
  /** It can report late results: it knows the target's URL and APP_TOKEN. */
  reports: boolean;
  /** Replaces its behaviour; throws an Error saying what is wrong with it. */
  setBehaviour(behaviour: AppBehaviour): void;
  deliveries(): readonly Delivery[];
  records(): CommandRecord[];
  close(): Promise<void>;
}

export interface MockApplicationOptions {
  /** The `whsec_…` secret the target signs with (its PROVISIONING_SECRET). */
  secret: string;
  host?: string;
  /** 0 (default): a free port. */
  port?: number;
  /** The target's base URL and APP_TOKEN, for the results reported after a 202. */
  serverUrl?: string;
  appToken?: string;
}

/** A fresh `whsec_` secret: 32 random bytes, standard base64. */
export function newWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

export async function startMockApplication(options: MockApplicationOptions): Promise<MockApplication> {
  const app: PartnerApp = await startPartnerApp({
    secrets: [options.secret],
    port: options.port ?? 0,
    host: options.host ?? "127.0.0.1",
    ...(options.serverUrl === undefined ? {} : { serverUrl: options.serverUrl }),
    ...(options.appToken === undefined ? {} : { appToken: options.appToken }),
    // A late result not taken at once is tried again soon: scenarios wait for it.
    resultRetry: { baseMs: 200, maxMs: 2_000 },
  });
  const deliveries = (): Delivery[] =>
    app.received.map((r) => {
      // The id the request claims, even when its signature was refused (the application keeps only verified ones).
      const claimed = r.id ?? r.headers["webhook-id"];
      return { r, webhookId: typeof claimed === "string" && claimed !== "" ? claimed : undefined };
    }).map(({ r, webhookId }) => ({
      ...(webhookId === undefined ? {} : { webhookId }),
      verified: r.verified,
      status: r.status,
      replayed: r.replayed,
      body: r.body,
      at: r.at,
    }));
  return {
    url: app.url,
    webhookUrl: app.webhookUrl,
    reports: options.serverUrl !== undefined && options.appToken !== undefined,
    setBehaviour(behaviour) {
      try {
        app.setMode(behaviour);
      } catch (err) {
        throw new Error(`the mock application refuses this behaviour: ${(err as Error).message}`, { cause: err });
      }
    },
    deliveries,
    records: () => commandRecords(deliveries(), app.resultCalls),
    close: () => app.close(),
  };
}

function parse(body: string): unknown {
  try {
    return JSON.parse(body) as unknown;
  } catch {
    return undefined;
  }
}

function requestIdOf(command: unknown): string | undefined {
  const id = (command as { data?: { request?: { id?: unknown } } } | undefined)?.data?.request?.id;
  return typeof id === "string" && id !== "" ? id : undefined;
}

/** The records of `deliveries`, grouped by request, in the order their first delivery came. */
export function commandRecords(
  deliveries: readonly Delivery[],
  resultCalls: readonly { commandId: string; attempt: number; body?: { outcome: string; reason?: string }; status?: number; error?: string }[] = [],
): CommandRecord[] {
  const groups = new Map<string, { delivery: Delivery; command: unknown }[]>();
  deliveries.forEach((delivery, i) => {
    const command = parse(delivery.body);
    const requestId = requestIdOf(command);
    const key = requestId !== undefined ? `request:${requestId}` : delivery.webhookId !== undefined ? `webhook:${delivery.webhookId}` : `delivery:${i}`;
    let group = groups.get(key);
    if (!group) groups.set(key, (group = []));
    group.push({ delivery, command });
  });
  return [...groups.values()].map((group) => {
    const first = group[0]!;
    const webhookIds = [...new Set(group.map((g) => g.delivery.webhookId).filter((id): id is string => id !== undefined))];
    const bodies = new Map<string, string>();
    let sameBody = true;
    for (const { delivery } of group) {
      if (delivery.webhookId === undefined) continue;
      const seen = bodies.get(delivery.webhookId);
      if (seen === undefined) bodies.set(delivery.webhookId, delivery.body);
      else if (seen !== delivery.body) sameBody = false;
    }
    const type = (first.command as { type?: unknown } | undefined)?.type;
    const requestId = requestIdOf(first.command);
    return {
      ...(requestId === undefined ? {} : { requestId }),
      ...(first.delivery.webhookId === undefined ? {} : { webhookId: first.delivery.webhookId }),
      webhookIds,
      sameBody,
      ...(typeof type === "string" ? { type } : {}),
      body: first.command,
      deliveries: group.length,
      statuses: group.map((g) => g.delivery.status),
      applied: group.filter((g) => g.delivery.status >= 200 && g.delivery.status < 300 && !g.delivery.replayed).length,
      signed: group.every((g) => g.delivery.verified),
      results: resultCalls
        .filter((c) => webhookIds.includes(c.commandId))
        .map((c) => ({
          attempt: c.attempt,
          outcome: c.body?.outcome ?? "(none)",
          ...(c.body && "reason" in c.body && c.body.reason !== undefined ? { reason: c.body.reason } : {}),
          ...(c.status === undefined ? {} : { status: c.status }),
          ...(c.error === undefined ? {} : { error: c.error }),
        })),
    };
  });
}

/**
 * What every delivery since the last look must be, whatever the scenario: signed with the
 * application's secret, and, across the whole run, one webhook-id per request and one body per
 * webhook-id. `seen` carries the run's first webhook-id of each request and body of each id.
 */
export function deliveryFailures(
  deliveries: readonly Delivery[],
  seen: { webhookIdOf: Map<string, string>; bodyOf: Map<string, string> },
): { check: string; expected: string; actual: string }[] {
  const failures: { check: string; expected: string; actual: string }[] = [];
  for (const d of deliveries) {
    const label = d.webhookId ?? "(no webhook-id)";
    if (!d.verified) {
      failures.push({
        check: `${label} signature`,
        expected: "a Standard Webhooks signature the application verifies with the shared secret (webhook-id, webhook-timestamp, webhook-signature)",
        actual: `refused by the application (answered ${d.status})`,
      });
      continue;
    }
    const id = d.webhookId!;
    const requestId = requestIdOf(parse(d.body));
    if (requestId !== undefined) {
      const first = seen.webhookIdOf.get(requestId);
      if (first === undefined) seen.webhookIdOf.set(requestId, id);
      else if (first !== id) {
        failures.push({ check: `${label} webhook-id`, expected: `request ${requestId} always sent as webhook-id ${first}`, actual: `also as ${id}` });
      }
    }
    const body = seen.bodyOf.get(id);
    if (body === undefined) seen.bodyOf.set(id, d.body);
    else if (body !== d.body) {
      failures.push({ check: `${label} body`, expected: "the same bytes on every delivery of a webhook-id", actual: "another body than its first delivery" });
    }
  }
  return failures;
}
