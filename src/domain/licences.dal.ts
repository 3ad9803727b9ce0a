/**
 * The SQL of licences (Orange's UserService), one statement per function, in the caller's
 * transaction or on the pool. Every writer locks licences in id order, so that two writers on
 * overlapping lists cannot deadlock.
 */
import { prepared, raw, sql, type Queryable, type Sql, type Tx } from "../db/sql.js";
import type { JsonObject, JsonValue } from "../lib/json.js";
import type { ExternalState, LicenceState } from "./licence-state.js";
import type { AppLicenceData } from "./ports.js";

/** A licence as the domain sees it (Orange's UserService without the wire shape). */
export interface LicenceRecord {
  id: string;
  fleetId: string;
  customerId: string;
  state: LicenceState;
  externalState: ExternalState | null;
  offerCode: string;
  endUser: JsonObject | null;
  realizingResource: JsonObject | null;
  login: JsonObject | null;
  serviceCharacteristics: JsonValue[] | null;
  /** ISO 8601 UTC with milliseconds, as PostgreSQL formats it (see COLUMNS). */
  createdAt: string;
  updatedAt: string;
}

interface LicenceRow {
  id: string;
  fleet_id: string;
  customer_id: string;
  state: LicenceState;
  external_state: ExternalState | null;
  offer_code: string;
  end_user: JsonObject | null;
  realizing_resource: JsonObject | null;
  login: JsonObject | null;
  service_characteristics: JsonValue[] | null;
  created_at: string;
  updated_at: string;
}

const iso = (column: string) => `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/**
 * The columns of a LicenceRow, for queries over `licence l` joined to `fleet f`. Timestamps leave
 * PostgreSQL already formatted: parsing then formatting 20,000 Dates in JavaScript was a third of
 * the time of listing a 10,000-licence fleet.
 */
const COLUMNS = raw(
  `l.id, l.fleet_id, f.customer_id, l.state, l.external_state, l.offer_code, l.end_user,
   l.realizing_resource, l.login, l.service_characteristics,
   ${iso("l.created_at")} AS created_at, ${iso("l.updated_at")} AS updated_at`,
);

function toRecord(r: LicenceRow): LicenceRecord {
  return {
    id: r.id,
    fleetId: r.fleet_id,
    customerId: r.customer_id,
    state: r.state,
    externalState: r.external_state,
    offerCode: r.offer_code,
    endUser: r.end_user,
    realizingResource: r.realizing_resource,
    login: r.login,
    serviceCharacteristics: r.service_characteristics,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

/**
 * A fleet's licence count and, when `page.limit` does not exceed `upTo`, the licences of the page
 * (id order); null when the fleet does not exist. One statement, hence one snapshot: a page this
 * small needs no transaction. `licences` is null when the page is larger than `upTo` (then read
 * with fleetLicencesFrom and fleetLicencesAfter in one snapshot).
 */
export async function fleetPageAtOnce(
  q: Queryable,
  fleetId: string,
  page: { offset: number; limit: number | null },
  upTo: number,
): Promise<{ total: number; licences: LicenceRecord[] | null } | null> {
  // LEAST ignores a null limit. LEFT JOIN: a fleet whose page is empty (or too large to read
  // here) gives one row of nulls beside its count, told apart from an unknown fleet (no row).
  const rows = await q.query<LicenceRow & { total: number }>(sql`
    SELECT t.total, l.*
    FROM fleet f
    CROSS JOIN LATERAL (SELECT count(*)::int AS total FROM licence c WHERE c.fleet_id = f.id) t
    LEFT JOIN LATERAL (
      SELECT ${COLUMNS} FROM licence l
      WHERE l.fleet_id = f.id AND LEAST(${page.limit}::int, t.total - ${page.offset}::int) <= ${upTo}::int
      ORDER BY l.id OFFSET ${page.offset}::int LIMIT ${page.limit}::int
    ) l ON true
    WHERE f.id = ${fleetId}
    ORDER BY l.id`);
  if (rows.length === 0) return null;
  const total = rows[0]!.total;
  if (Math.min(page.limit ?? Number.POSITIVE_INFINITY, total - page.offset) > upTo) return { total, licences: null };
  return { total, licences: rows.filter((r) => r.id !== null).map(toRecord) };
}

/** How many licences a fleet has; null when the fleet does not exist. */
export async function countFleetLicences(q: Queryable, fleetId: string): Promise<number | null> {
  const [row] = await q.query<{ total: number }>(sql`
    SELECT (SELECT count(*)::int FROM licence l WHERE l.fleet_id = f.id) AS total FROM fleet f WHERE f.id = ${fleetId}`);
  return row?.total ?? null;
}

const FLEET_CURSOR = "fleet_listing";

/**
 * Opens, in the caller's transaction, the cursor FLEET_CURSOR over `limit` licences of a fleet
 * after skipping `offset` of them (id order), read with fetchFleetCursor.
 *
 * A cursor, not a query per chunk (keyset on the id): it is planned once. With the statistics of
 * a fleet just ordered (autovacuum has not analysed the table yet), PostgreSQL takes a fleet of
 * 100,000 for one of a few dozen licences and answers each "next 1,000 after this id" by reading
 * and sorting the rest of the fleet (measured: 125 ms a chunk at half of the fleet, the whole
 * listing 18 s instead of 2 s).
 */
export async function openFleetCursor(tx: Tx, fleetId: string, offset: number, limit: number): Promise<void> {
  await tx.execute(sql`
    DECLARE ${raw(FLEET_CURSOR)} NO SCROLL CURSOR FOR
    SELECT ${COLUMNS} FROM licence l JOIN fleet f ON f.id = l.fleet_id
    WHERE l.fleet_id = ${fleetId}
    ORDER BY l.id OFFSET ${offset}::int LIMIT ${limit}::int`);
}

/** The next `count` licences of the cursor openFleetCursor opened (fewer at its end). */
export async function fetchFleetCursor(tx: Tx, count: number): Promise<LicenceRecord[]> {
  if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`fetchFleetCursor: count must be a positive integer (got ${count})`);
  const rows = await tx.query<LicenceRow>(sql`FETCH FORWARD ${raw(String(count))} FROM ${raw(FLEET_CURSOR)}`);
  return rows.map(toRecord);
}

/**
 * `l.id` among `ids`: for one id, compared to it. PostgreSQL assumes ten elements of an array
 * parameter in a generic plan and knows the one of a custom plan, so the generic plan always
 * looked costlier and a statement on one licence (a suspension, a reactivation) was planned
 * anew at each run; compared to one id, it keeps its generic plan (test/update-order-plan.test.ts).
 */
function idAmong(ids: string[]): Sql {
  return ids.length === 1 ? sql`l.id = ${ids[0]}::text` : sql`l.id = ANY(${ids}::text[])`;
}

/** The licences that exist among `ids`, in id order. */
export async function selectLicences(q: Queryable, ids: string[]): Promise<LicenceRecord[]> {
  const rows = await q.query<LicenceRow>(prepared(sql`
    SELECT ${COLUMNS} FROM licence l JOIN fleet f ON f.id = l.fleet_id
    WHERE ${idAmong(ids)} ORDER BY l.id`));
  return rows.map(toRecord);
}

/** The same, locked for a change (id order). */
export async function lockLicences(tx: Tx, ids: string[]): Promise<LicenceRecord[]> {
  const rows = await tx.query<LicenceRow>(prepared(sql`
    SELECT ${COLUMNS} FROM licence l JOIN fleet f ON f.id = l.fleet_id
    WHERE ${idAmong(ids)} ORDER BY l.id FOR UPDATE OF l`));
  return rows.map(toRecord);
}

/**
 * The licences among `ids` whose order is completed, locked (id order). A licence of an order
 * that is not completed is unknown to Orange, hence to partner-side changes.
 */
export async function lockLicencesOfCompletedOrders(tx: Tx, ids: string[]): Promise<LicenceRecord[]> {
  const rows = await tx.query<LicenceRow>(prepared(sql`
    SELECT ${COLUMNS}
    FROM licence l JOIN fleet f ON f.id = l.fleet_id JOIN product_order o ON o.id = l.order_id
    WHERE ${idAmong(ids)} AND o.state = 'completed'
    ORDER BY l.id FOR UPDATE OF l`));
  return rows.map(toRecord);
}

export interface NewLicences {
  ids: string[];
  fleetId: string;
  orderId: string;
  offerCode: string;
  /** Pre-configuration of the first licences, by position (endUserConfiguration). */
  seeds: { endUser: JsonObject | null; realizingResource: JsonObject | null }[];
  /** What the partner's application told about some of them (webhook mode), by licence id. */
  app?: AppLicenceData[];
}

/**
 * Creates the licences of an order, `active`, in one statement whatever their number: the ids
 * travel as one array and the (few) seeds as one JSON array joined by position.
 */
export async function insertLicences(tx: Tx, l: NewLicences, now: Date): Promise<void> {
  if (l.app !== undefined && l.app.length > 0) {
    // The application's word wins over Orange's seed for the technical resource.
    await tx.execute(sql`
      INSERT INTO licence (id, fleet_id, order_id, state, offer_code, end_user, realizing_resource, login,
                           service_characteristics, created_at, updated_at, end_user_id, end_user_email)
      SELECT u.id, ${l.fleetId}, ${l.orderId}, 'active'::"LicenceState", ${l.offerCode},
             NULLIF(s.value -> 'endUser', 'null'::jsonb),
             COALESCE(a.value -> 'realizingResource', NULLIF(s.value -> 'realizingResource', 'null'::jsonb)),
             a.value -> 'login', a.value -> 'serviceCharacteristic', ${now}, ${now},
             s.value -> 'endUser' ->> 'id', lower(s.value -> 'endUser' ->> 'email')
      FROM unnest(${l.ids}::text[]) WITH ORDINALITY AS u(id, n)
      LEFT JOIN jsonb_array_elements(${JSON.stringify(l.seeds)}::jsonb) WITH ORDINALITY AS s(value, n) USING (n)
      LEFT JOIN jsonb_array_elements(${JSON.stringify(l.app)}::jsonb) AS a(value) ON a.value ->> 'id' = u.id`);
    return;
  }
  // Prepared: its plan cannot go wrong with the arrays' size (each licence joins the seed of its
  // position, and there are few seeds). The statement above is not: a generic plan, estimating
  // 100 licences and 100 answers, could join 10,000 licences to 10,000 answers by nested loop.
  await tx.execute(prepared(sql`
    INSERT INTO licence (id, fleet_id, order_id, state, offer_code, end_user, realizing_resource,
                         created_at, updated_at, end_user_id, end_user_email)
    SELECT u.id, ${l.fleetId}, ${l.orderId}, 'active'::"LicenceState", ${l.offerCode},
           NULLIF(s.value -> 'endUser', 'null'::jsonb), NULLIF(s.value -> 'realizingResource', 'null'::jsonb),
           ${now}, ${now}, s.value -> 'endUser' ->> 'id', lower(s.value -> 'endUser' ->> 'email')
    FROM unnest(${l.ids}::text[]) WITH ORDINALITY AS u(id, n)
    LEFT JOIN jsonb_array_elements(${JSON.stringify(l.seeds)}::jsonb) WITH ORDINALITY AS s(value, n) USING (n)`));
}

/**
 * Stores what the partner's application told about licences it changed (webhook mode): a field it
 * sent replaces the licence's, the others stay.
 */
export async function storeAppData(tx: Tx, app: AppLicenceData[], now: Date): Promise<void> {
  if (app.length === 0) return;
  await tx.execute(sql`
    UPDATE licence l SET
      realizing_resource = COALESCE(a.value -> 'realizingResource', l.realizing_resource),
      login = COALESCE(a.value -> 'login', l.login),
      service_characteristics = COALESCE(a.value -> 'serviceCharacteristic', l.service_characteristics),
      updated_at = ${now}
    FROM jsonb_array_elements(${JSON.stringify(app)}::jsonb) AS a(value)
    WHERE l.id = a.value ->> 'id'`);
}

/** The licences' new values as rows: one licence's as parameters, as idAmong does and for the same reason. */
function statesAndOffers(next: LicenceRecord[]): Sql {
  if (next.length === 1) {
    const [l] = next as [LicenceRecord];
    return sql`(VALUES (${l.id}::text, ${l.state}::text, ${l.externalState}::text, ${l.offerCode}::text))`;
  }
  return sql`unnest(${next.map((l) => l.id)}::text[], ${next.map((l) => l.state)}::text[],
                ${next.map((l) => l.externalState)}::text[], ${next.map((l) => l.offerCode)}::text[])`;
}

/** Writes state, Orange's last asked state and offer of each licence; the licences after. */
export async function updateStatesAndOffers(tx: Tx, next: LicenceRecord[], now: Date): Promise<LicenceRecord[]> {
  const rows = await tx.query<LicenceRow>(prepared(sql`
    UPDATE licence l SET
      state = v.state::"LicenceState",
      external_state = v.external_state::"ExternalState",
      offer_code = v.offer_code,
      terminated_at = CASE WHEN v.state = 'terminated' THEN COALESCE(l.terminated_at, ${now}) END,
      updated_at = ${now}
    FROM ${statesAndOffers(next)} AS v(id, state, external_state, offer_code), fleet f
    WHERE l.id = v.id AND f.id = l.fleet_id
    RETURNING ${COLUMNS}`));
  return rows.map(toRecord);
}

const json = (value: JsonValue | null): string | null => (value === null ? null : JSON.stringify(value));

/** Writes end user, technical resource, login and characteristics of one licence; the licence after. */
export async function updateDetails(tx: Tx, next: LicenceRecord, now: Date): Promise<LicenceRecord> {
  const [row] = await tx.query<LicenceRow>(prepared(sql`
    UPDATE licence l SET
      end_user = ${json(next.endUser)}::jsonb,
      end_user_id = ${json(next.endUser)}::jsonb ->> 'id',
      end_user_email = lower(${json(next.endUser)}::jsonb ->> 'email'),
      realizing_resource = ${json(next.realizingResource)}::jsonb,
      login = ${json(next.login)}::jsonb,
      service_characteristics = ${json(next.serviceCharacteristics)}::jsonb,
      updated_at = ${now}
    FROM fleet f
    WHERE l.id = ${next.id} AND f.id = l.fleet_id
    RETURNING ${COLUMNS}`));
  return toRecord(row!);
}

/** Whether some licence has this end user (a partner `eu_…` id). */
export async function endUserExists(tx: Tx, endUserId: string): Promise<boolean> {
  const rows = await tx.query(sql`SELECT 1 FROM licence l WHERE l.end_user_id = ${endUserId} LIMIT 1`);
  return rows.length > 0;
}
