/**
 * What the application does for each command the server sends, on its own records. Every
 * handler checks everything first and changes nothing when it refuses (all or nothing), and
 * returns what it tells the server about the licences: `{ licences: [...] }`.
 *
 * Liberal in what it reads: unknown fields are ignored, an update naming a licence the
 * application never saw adds it (the server is the reference for which licences exist).
 */
import type { Licence, StoreData } from "./store.js";

export interface Command {
  type: string;
  timestamp?: string;
  data: Record<string, unknown>;
}

/**
 * A refusal, answered with `{ reason }`: 409 when the command conflicts with the application's
 * records, 422 when it cannot be read. Nothing was changed.
 */
export class Refusal extends Error {
  constructor(
    message: string,
    readonly status: 409 | 422 = 409,
  ) {
    super(message);
  }
}

export interface AppLicence {
  id: string;
  realizingResource?: unknown;
  login?: { key: string; value: string };
}

export interface Context {
  /** The webhook-id, kept in each licence's history. */
  commandId: string;
  now: Date;
  /** Base of the URLs the application gives its users, e.g. https://app.example */
  publicUrl: string;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Obj) : {});
const list = (v: unknown): Obj[] => (Array.isArray(v) ? v.map(obj) : []);
const str = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);

export const COMMAND_TYPES = [
  "customer.upserted",
  "licences.provision",
  "licences.suspend",
  "licences.reactivate",
  "licences.terminate",
  "licences.change_offer",
  "licences.update",
] as const;

/** The state a licence ends in when the command does not say (`after.state` absent). */
const DEFAULT_STATE: Record<string, string> = {
  "licences.suspend": "inactive",
  "licences.reactivate": "active",
  "licences.terminate": "terminated",
};

export function carryOut(store: StoreData, command: Command, ctx: Context): { licences: AppLicence[] } {
  switch (command.type) {
    case "customer.upserted":
      upsertCustomer(store, command.data, ctx);
      return { licences: [] };
    case "licences.provision":
      return provision(store, command, ctx);
    case "licences.suspend":
    case "licences.reactivate":
    case "licences.terminate":
    case "licences.change_offer":
    case "licences.update":
      return update(store, command, ctx);
    default:
      // An unknown command is refused rather than ignored: the server would otherwise believe it done.
      throw new Refusal(`unknown command type ${JSON.stringify(command.type)} (this application knows ${COMMAND_TYPES.join(", ")})`, 422);
  }
}

function upsertCustomer(store: StoreData, data: Obj, ctx: Context): string | undefined {
  const c = obj(data.customer);
  const id = str(c.id);
  if (id === undefined) return undefined;
  const before = store.customers[id];
  store.customers[id] = {
    ...before,
    id,
    ...(str(c.orangeReference) ? { orangeReference: str(c.orangeReference) } : {}),
    ...(str(c.tradingName) ? { tradingName: str(c.tradingName) } : {}),
    ...(str(c.name) ? { name: str(c.name) } : {}),
    ...(str(c.organizationCode) ? { organizationCode: str(c.organizationCode) } : {}),
    contacts: Array.isArray(c.contacts) ? list(c.contacts) : (before?.contacts ?? []),
    updatedAt: ctx.now.toISOString(),
  };
  return id;
}

function provision(store: StoreData, command: Command, ctx: Context): { licences: AppLicence[] } {
  const data = command.data;
  const fleet = obj(data.fleet);
  const fleetId = str(fleet.id);
  const wanted = list(data.licences);
  if (wanted.some((l) => str(l.id) === undefined)) throw new Refusal("every licence needs an id", 422);
  const customerId = upsertCustomer(store, data, ctx) ?? str(obj(data.customer).id);
  const at = ctx.now.toISOString();
  if (fleetId !== undefined) {
    store.fleets[fleetId] = {
      createdAt: at,
      ...store.fleets[fleetId],
      id: fleetId,
      ...(customerId ? { customerId } : {}),
      ...(fleet.offer !== undefined ? { offer: fleet.offer } : {}),
    };
  }
  const answered: AppLicence[] = [];
  for (const item of wanted) {
    const id = item.id as string;
    const endUser = item.endUser === undefined ? undefined : obj(item.endUser);
    // A licence provisioned again (the same licence in a new command) keeps its seat.
    const known = store.licences[id];
    const licence: Licence = known ?? {
      id,
      state: "active",
      realizingResource: item.realizingResource ?? {
        type: "url",
        characteristic: [{ name: "url", value: `${ctx.publicUrl}/c/${customerId ?? "unknown"}/l/${id}` }],
      },
      login: { key: "login", value: str(endUser?.email) ?? `${id}@${new URL(ctx.publicUrl).hostname}` },
      createdAt: at,
      updatedAt: at,
      history: [],
    };
    Object.assign(licence, {
      ...(fleetId ? { fleetId } : {}),
      ...(customerId ? { customerId } : {}),
      ...(fleet.offer !== undefined ? { offer: fleet.offer } : {}),
      ...(endUser ? { endUser } : {}),
      updatedAt: at,
    });
    licence.history.push({ command: ctx.commandId, type: command.type, state: licence.state, at });
    store.licences[id] = licence;
    answered.push({
      id,
      ...(licence.realizingResource ? { realizingResource: licence.realizingResource } : {}),
      ...(licence.login ? { login: licence.login } : {}),
    });
  }
  return { licences: answered };
}

function update(store: StoreData, command: Command, ctx: Context): { licences: AppLicence[] } {
  const items = list(command.data.licences);
  const customerId = str(obj(command.data.customer).id);
  // Check every licence first: one refusal changes nothing.
  const changes = items.map((item) => {
    const id = str(item.id);
    if (id === undefined) throw new Refusal("every licence needs an id", 422);
    const after = obj(item.after);
    const state = str(after.state) ?? DEFAULT_STATE[command.type] ?? store.licences[id]?.state ?? "active";
    const current = store.licences[id];
    if (current?.state === "terminated" && state !== "terminated") {
      throw new Refusal(`licence ${id} is terminated in the application and cannot become ${state}`);
    }
    return { id, item, after, state };
  });
  const at = ctx.now.toISOString();
  for (const { id, item, after, state } of changes) {
    const licence: Licence = store.licences[id] ?? { id, state, createdAt: at, updatedAt: at, history: [] };
    licence.state = state;
    if (after.offer !== undefined) licence.offer = after.offer;
    if (str(item.fleetId)) licence.fleetId = str(item.fleetId);
    if (customerId) licence.customerId = customerId;
    // A terminated seat gives its login back.
    if (state === "terminated") delete licence.login;
    licence.updatedAt = at;
    licence.history.push({ command: ctx.commandId, type: command.type, state, at });
    store.licences[id] = licence;
  }
  // Nothing new for the server to store: it already knows the states it asked for.
  return { licences: [] };
}
