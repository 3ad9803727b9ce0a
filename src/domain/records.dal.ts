/**
 * The SQL of what operators look up (src/admin's listings, details and search box): customers,
 * fleets, licences, orders and updates, one statement per function, on the pool or in the
 * caller's read-only transaction. Every filter and sort has its index (migration `history`), so
 * that a listing reads its page and its count from indexes on a large store.
 */
import { empty, join, raw, sql, type Queryable, type Sql } from "../db/sql.js";
import type { JsonObject, JsonValue } from "../lib/json.js";

export interface Sort<F extends string> {
  field: F;
  descending: boolean;
}

export interface PageRequest<F extends string> {
  offset: number;
  limit: number;
  sort: Sort<F>;
}

/** `ORDER BY` of a page: the sort column, then the id (ties), in the sort's direction. */
function orderBy(column: string, descending: boolean, tie = "id"): Sql {
  const dir = descending ? "DESC" : "ASC";
  return raw(column === tie ? `${column} ${dir}` : `${column} ${dir}, ${tie} ${dir}`);
}

function where(conditions: (Sql | undefined)[]): Sql {
  const present = conditions.filter((c): c is Sql => c !== undefined);
  return present.length > 0 ? sql`WHERE ${join(present, " AND ")}` : empty;
}

/** A LIKE pattern that matches `text` anywhere, its own wildcards taken literally. */
function containing(text: string): string {
  return `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

const count = async (q: Queryable, statement: Sql): Promise<number> => (await q.query<{ n: number }>(statement))[0]?.n ?? 0;

// ---------------------------------------------------------------------------------------------
// Customers

export const CUSTOMER_SORT = { createdAt: "created_at", orangeRef: "orange_ref", tradingName: "trading_name" } as const;
export type CustomerSortField = keyof typeof CUSTOMER_SORT;

export interface CustomerFilter {
  orangeRef?: string;
  /** A part of the trading name or of the name, whatever the case. */
  name?: string;
  organizationCode?: string;
}

export interface CustomerRow {
  id: string;
  orange_ref: string;
  trading_name: string | null;
  name: string | null;
  organization_code: string | null;
  created_at: Date;
  updated_at: Date;
  fleets: number;
}

function customerWhere(f: CustomerFilter): Sql {
  return where([
    f.orangeRef !== undefined ? sql`c.orange_ref = ${f.orangeRef}` : undefined,
    // Two trigram indexes (pg_trgm), one per column, combined by the planner.
    f.name !== undefined ? sql`(c.trading_name ILIKE ${containing(f.name)} OR c.name ILIKE ${containing(f.name)})` : undefined,
    f.organizationCode !== undefined ? sql`c.organization_code = ${f.organizationCode}` : undefined,
  ]);
}

const CUSTOMER_COLUMNS = raw(`c.id, c.orange_ref, c.trading_name, c.name, c.organization_code, c.created_at, c.updated_at,
  (SELECT count(*) FROM fleet f WHERE f.customer_id = c.id) AS fleets`);

export async function listCustomers(q: Queryable, f: CustomerFilter, page: PageRequest<CustomerSortField>): Promise<CustomerRow[]> {
  return q.query<CustomerRow>(sql`
    SELECT ${CUSTOMER_COLUMNS} FROM customer c ${customerWhere(f)}
     ORDER BY ${orderBy(`c.${CUSTOMER_SORT[page.sort.field]}`, page.sort.descending, "c.id")}
    OFFSET ${page.offset} LIMIT ${page.limit}`);
}

export async function countCustomers(q: Queryable, f: CustomerFilter): Promise<number> {
  return count(q, sql`SELECT count(*) AS n FROM customer c ${customerWhere(f)}`);
}

export interface CustomerDetailRow extends CustomerRow {
  postal_address: JsonValue | null;
  characteristics: JsonValue | null;
  contacts: JsonObject[] | null;
  fleet_list: { id: string; offerCode: string; createdAt: string; licences: number }[] | null;
}

export async function getCustomer(q: Queryable, id: string): Promise<CustomerDetailRow | undefined> {
  const [row] = await q.query<CustomerDetailRow>(sql`
    SELECT ${CUSTOMER_COLUMNS}, c.postal_address, c.characteristics,
           (SELECT json_agg(json_build_object('id', ct.id, 'orangeRef', ct.orange_ref, 'role', ct.role, 'title', ct.title,
                   'givenName', ct.given_name, 'familyName', ct.family_name, 'email', ct.email) ORDER BY ct.created_at, ct.id)
              FROM contact ct WHERE ct.customer_id = c.id) AS contacts,
           (SELECT json_agg(json_build_object('id', f.id, 'offerCode', f.offer_code,
                   'createdAt', to_char(f.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                   'licences', (SELECT count(*) FROM licence l WHERE l.fleet_id = f.id)) ORDER BY f.created_at, f.id)
              FROM fleet f WHERE f.customer_id = c.id) AS fleet_list
      FROM customer c WHERE c.id = ${id}`);
  return row;
}

// ---------------------------------------------------------------------------------------------
// Fleets

export const FLEET_SORT = { createdAt: "created_at" } as const;
export type FleetSortField = keyof typeof FLEET_SORT;

export interface FleetFilter {
  customerId?: string;
  offerCode?: string;
}

export interface FleetRow {
  id: string;
  customer_id: string;
  customer_orange_ref: string;
  customer_trading_name: string | null;
  offer_code: string;
  created_at: Date;
  updated_at: Date;
  licences: number;
}

function fleetWhere(f: FleetFilter): Sql {
  return where([
    f.customerId !== undefined ? sql`f.customer_id = ${f.customerId}` : undefined,
    f.offerCode !== undefined ? sql`f.offer_code = ${f.offerCode}` : undefined,
  ]);
}

const FLEET_COLUMNS = raw(`f.id, f.customer_id, c.orange_ref AS customer_orange_ref, c.trading_name AS customer_trading_name,
  f.offer_code, f.created_at, f.updated_at, (SELECT count(*) FROM licence l WHERE l.fleet_id = f.id) AS licences`);

export async function listFleets(q: Queryable, f: FleetFilter, page: PageRequest<FleetSortField>): Promise<FleetRow[]> {
  return q.query<FleetRow>(sql`
    SELECT ${FLEET_COLUMNS} FROM fleet f JOIN customer c ON c.id = f.customer_id ${fleetWhere(f)}
     ORDER BY ${orderBy(`f.${FLEET_SORT[page.sort.field]}`, page.sort.descending, "f.id")}
    OFFSET ${page.offset} LIMIT ${page.limit}`);
}

export async function countFleets(q: Queryable, f: FleetFilter): Promise<number> {
  return count(q, sql`SELECT count(*) AS n FROM fleet f ${fleetWhere(f)}`);
}

export interface FleetDetailRow extends FleetRow {
  characteristics: JsonValue | null;
  by_state: Record<string, number> | null;
}

export async function getFleet(q: Queryable, id: string): Promise<FleetDetailRow | undefined> {
  const [row] = await q.query<FleetDetailRow>(sql`
    SELECT ${FLEET_COLUMNS}, f.characteristics,
           (SELECT json_object_agg(s.state, s.n) FROM (SELECT l.state, count(*) AS n FROM licence l WHERE l.fleet_id = f.id GROUP BY l.state) s) AS by_state
      FROM fleet f JOIN customer c ON c.id = f.customer_id WHERE f.id = ${id}`);
  return row;
}

// ---------------------------------------------------------------------------------------------
// Licences

/** Licence ids are time-ordered (src/lib/ids.ts): id order is creation order, and needs no other index. */
export const LICENCE_SORT = { id: "id" } as const;
export type LicenceSortField = keyof typeof LICENCE_SORT;

export interface LicenceFilter {
  state?: string;
  offerCode?: string;
  fleetId?: string;
  customerId?: string;
  orderId?: string;
  /** The end user's e-mail, whatever the case. */
  endUserEmail?: string;
}

export interface LicenceRow {
  id: string;
  fleet_id: string;
  customer_id: string;
  order_id: string;
  state: string;
  external_state: string | null;
  offer_code: string;
  end_user: JsonObject | null;
  realizing_resource: JsonObject | null;
  login: JsonObject | null;
  service_characteristics: JsonValue[] | null;
  created_at: Date;
  updated_at: Date;
  terminated_at: Date | null;
}

function licenceWhere(f: LicenceFilter, extra?: Sql): Sql {
  const email = f.endUserEmail;
  return where([
    extra,
    f.state !== undefined ? sql`l.state = ${f.state}::"LicenceState"` : undefined,
    f.offerCode !== undefined ? sql`l.offer_code = ${f.offerCode}` : undefined,
    f.fleetId !== undefined ? sql`l.fleet_id = ${f.fleetId}` : undefined,
    f.customerId !== undefined ? sql`l.fleet_id = ANY(ARRAY(SELECT id FROM fleet WHERE customer_id = ${f.customerId}))` : undefined,
    f.orderId !== undefined ? sql`l.order_id = ${f.orderId}` : undefined,
    email !== undefined ? sql`l.end_user_email = lower(${email})` : undefined,
  ]);
}

const LICENCE_COLUMNS = raw(`l.id, l.fleet_id, f.customer_id, l.order_id, l.state::text AS state, l.external_state::text AS external_state,
  l.offer_code, l.end_user, l.realizing_resource, l.login, l.service_characteristics, l.created_at, l.updated_at, l.terminated_at`);

export async function listLicences(q: Queryable, f: LicenceFilter, page: PageRequest<LicenceSortField>): Promise<LicenceRow[]> {
  if (f.customerId !== undefined && f.fleetId === undefined) {
    // From the customer's fleets: each fleet's first rows of the page through its (fleet_id, id)
    // index, then merged. Filtering the licences by "one of these fleets" instead makes the
    // planner walk every licence in id order until it has a page.
    const { customerId, ...rest } = f;
    const dir = raw(page.sort.descending ? "DESC" : "ASC");
    return q.query<LicenceRow>(sql`
      SELECT ${LICENCE_COLUMNS}
        FROM fleet f CROSS JOIN LATERAL (
          SELECT * FROM licence l ${licenceWhere(rest, sql`l.fleet_id = f.id`)}
           ORDER BY l.id ${dir} LIMIT ${page.offset + page.limit}) l
       WHERE f.customer_id = ${customerId}
       ORDER BY l.id ${dir}
      OFFSET ${page.offset} LIMIT ${page.limit}`);
  }
  return q.query<LicenceRow>(sql`
    SELECT ${LICENCE_COLUMNS} FROM licence l JOIN fleet f ON f.id = l.fleet_id ${licenceWhere(f)}
     ORDER BY ${orderBy(`l.${LICENCE_SORT[page.sort.field]}`, page.sort.descending, `l.id`)}
    OFFSET ${page.offset} LIMIT ${page.limit}`);
}

export async function countLicences(q: Queryable, f: LicenceFilter): Promise<number> {
  return count(q, sql`SELECT count(*) AS n FROM licence l ${licenceWhere(f)}`);
}

export async function getLicence(q: Queryable, id: string): Promise<LicenceRow | undefined> {
  const [row] = await q.query<LicenceRow>(sql`
    SELECT ${LICENCE_COLUMNS} FROM licence l JOIN fleet f ON f.id = l.fleet_id WHERE l.id = ${id}`);
  return row;
}

// ---------------------------------------------------------------------------------------------
// Orders and updates (Orange's requests)

export const REQUEST_SORT = { createdAt: "created_at" } as const;
export type RequestSortField = keyof typeof REQUEST_SORT;

export interface RequestFilter {
  state?: string;
  orangeRef?: string;
  /** Received at or after. */
  from?: Date;
  /** Received before. */
  to?: Date;
  /** Orders only. */
  useCase?: string;
  customerId?: string;
  fleetId?: string;
  /** Updates only: the updates that named this licence. */
  licenceId?: string;
}

export interface RequestRow {
  id: string;
  orange_ref: string | null;
  idempotency_key: string | null;
  state: string;
  answer_mode: string | null;
  failure_reason: string | null;
  attempts: number;
  last_error: string | null;
  created_at: Date;
  completed_at: Date | null;
  /** Orders. */
  use_case?: string;
  customer_id?: string | null;
  fleet_id?: string | null;
  quantity?: number | null;
  /** Updates: how many licences it named. */
  licences?: number;
}

export type RequestKind = "order" | "update";

function requestWhere(kind: RequestKind, f: RequestFilter): Sql {
  return where([
    f.state !== undefined ? sql`r.state = ${f.state}::"RequestState"` : undefined,
    f.orangeRef !== undefined ? sql`r.orange_ref = ${f.orangeRef}` : undefined,
    f.from !== undefined ? sql`r.created_at >= ${f.from}` : undefined,
    f.to !== undefined ? sql`r.created_at < ${f.to}` : undefined,
    kind === "order" && f.useCase !== undefined ? sql`r.use_case = ${f.useCase}` : undefined,
    kind === "order" && f.customerId !== undefined ? sql`r.customer_id = ${f.customerId}` : undefined,
    kind === "order" && f.fleetId !== undefined ? sql`r.fleet_id = ${f.fleetId}` : undefined,
    kind === "update" && f.licenceId !== undefined ? sql`r.licence_ids @> ARRAY[${f.licenceId}::text]` : undefined,
  ]);
}

const REQUEST_COLUMNS = raw(`r.id, r.orange_ref, r.idempotency_key, r.state::text AS state, r.answer_mode, r.failure_reason,
  r.attempts, r.last_error, r.created_at, r.completed_at`);
const KIND_COLUMNS = {
  order: raw(`r.use_case, r.customer_id, r.fleet_id, r.quantity`),
  update: raw(`cardinality(r.licence_ids) AS licences`),
};
const TABLE = { order: raw("product_order"), update: raw("licence_update") };

export async function listRequests(q: Queryable, kind: RequestKind, f: RequestFilter, page: PageRequest<RequestSortField>): Promise<RequestRow[]> {
  return q.query<RequestRow>(sql`
    SELECT ${REQUEST_COLUMNS}, ${KIND_COLUMNS[kind]} FROM ${TABLE[kind]} r ${requestWhere(kind, f)}
     ORDER BY ${orderBy(`r.${REQUEST_SORT[page.sort.field]}`, page.sort.descending, "r.id")}
    OFFSET ${page.offset} LIMIT ${page.limit}`);
}

export async function countRequests(q: Queryable, kind: RequestKind, f: RequestFilter): Promise<number> {
  return count(q, sql`SELECT count(*) AS n FROM ${TABLE[kind]} r ${requestWhere(kind, f)}`);
}

export interface RequestDetailRow extends RequestRow {
  request: JsonValue;
  response: JsonValue | null;
  licence_ids?: string[];
}

export async function getRequest(q: Queryable, kind: RequestKind, id: string): Promise<RequestDetailRow | undefined> {
  const [row] = await q.query<RequestDetailRow>(sql`
    SELECT ${REQUEST_COLUMNS}, ${KIND_COLUMNS[kind]}, r.request, r.response ${kind === "update" ? raw(", r.licence_ids") : empty}
      FROM ${TABLE[kind]} r WHERE r.id = ${id}`);
  return row;
}

export interface RequestEventRow {
  id: string;
  type: string;
  state: string;
  fleet_id: string | null;
  attempts: number;
  last_status: number | null;
  last_error: string | null;
  created_at: Date;
  delivered_at: Date | null;
  dead_at: Date | null;
}

/** The events that told Orange about a request, in the order they were written. */
export async function eventsOfRequest(q: Queryable, kind: RequestKind, id: string): Promise<RequestEventRow[]> {
  return q.query<RequestEventRow>(sql`
    SELECT id, type, state::text AS state, fleet_id, attempts, last_status, last_error, created_at, delivered_at, dead_at
      FROM outbox_event WHERE ${kind === "order" ? raw("order_id") : raw("update_id")} = ${id}
     ORDER BY seq`);
}

// ---------------------------------------------------------------------------------------------
// The search box

export type FoundKind = "order" | "update" | "customer" | "contact" | "fleet" | "licence" | "event" | "command";

export interface FoundRow {
  kind: FoundKind;
  id: string;
  /** What the label and the link need (the customer of a contact…). */
  info: JsonObject;
}

/**
 * Whatever `q` is, a partner id or an Orange reference: every object it names, by equality on
 * indexed columns only (one index probe each), in one statement.
 */
function found(q: string): Sql {
  return sql`
    SELECT 'order' AS kind, r.id, json_build_object('state', r.state, 'useCase', r.use_case, 'orangeRef', r.orange_ref,
           'reason', r.failure_reason) AS info, r.created_at AS at
      FROM product_order r WHERE r.id = ${q} OR r.orange_ref = ${q} OR r.idempotency_key = ${q}
    UNION ALL
    SELECT 'update', r.id, json_build_object('state', r.state, 'orangeRef', r.orange_ref, 'reason', r.failure_reason), r.created_at
      FROM licence_update r WHERE r.id = ${q} OR r.orange_ref = ${q} OR r.idempotency_key = ${q}
    UNION ALL
    SELECT 'customer', c.id, json_build_object('orangeRef', c.orange_ref, 'tradingName', c.trading_name, 'name', c.name), c.created_at
      FROM customer c WHERE c.id = ${q} OR c.orange_ref = ${q}
    UNION ALL
    SELECT 'contact', ct.id, json_build_object('customerId', ct.customer_id, 'orangeRef', ct.orange_ref, 'givenName', ct.given_name,
           'familyName', ct.family_name, 'email', ct.email), ct.created_at
      FROM contact ct WHERE ct.id = ${q} OR ct.orange_ref = ${q}
    UNION ALL
    SELECT 'fleet', f.id, json_build_object('offerCode', f.offer_code, 'customerId', f.customer_id), f.created_at
      FROM fleet f WHERE f.id = ${q}
    UNION ALL
    SELECT 'licence', l.id, json_build_object('state', l.state, 'offerCode', l.offer_code, 'fleetId', l.fleet_id,
           'endUser', l.end_user -> 'id', 'givenName', l.end_user ->> 'givenName', 'familyName', l.end_user ->> 'familyName'), l.created_at
      FROM licence l WHERE l.id = ${q} OR l.end_user_id = ${q}
    UNION ALL
    SELECT 'event', e.id, json_build_object('type', e.type, 'state', e.state), e.created_at
      FROM outbox_event e WHERE e.id = ${q}
    UNION ALL
    SELECT 'command', p.id, json_build_object('type', p.type, 'state', p.state, 'requestId', p.request_id), p.created_at
      FROM provisioning_command p WHERE p.id = ${q}`;
}

export async function search(q: Queryable, text: string, page: { offset: number; limit: number }): Promise<FoundRow[]> {
  return q.query<FoundRow>(sql`
    SELECT kind, id, info FROM (${found(text)}) s ORDER BY at DESC, id OFFSET ${page.offset} LIMIT ${page.limit}`);
}

export async function countFound(q: Queryable, text: string): Promise<number> {
  return count(q, sql`SELECT count(*) AS n FROM (${found(text)}) s`);
}
