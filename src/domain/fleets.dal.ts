/** The SQL of fleets (Orange's productRef), one statement per function, in the caller's transaction. */
import { prepared, sql, type Tx } from "../db/sql.js";
import type { JsonValue } from "../lib/json.js";

const json = (value: JsonValue | undefined): string | null => (value === undefined ? null : JSON.stringify(value));

/**
 * The fleet with its customer's Orange reference, locked, so that concurrent orders on one fleet
 * serialise cleanly.
 */
export async function lockFleet(tx: Tx, id: string): Promise<{ id: string; customer_id: string; orange_ref: string } | undefined> {
  const [row] = await tx.query<{ id: string; customer_id: string; orange_ref: string }>(prepared(sql`
    SELECT f.id, f.customer_id, c.orange_ref
    FROM fleet f JOIN customer c ON c.id = f.customer_id
    WHERE f.id = ${id}
    FOR UPDATE OF f`));
  return row;
}

export async function insertFleet(
  tx: Tx,
  f: { id: string; customerId: string; offerCode: string; characteristics?: JsonValue[] },
  now: Date,
): Promise<void> {
  await tx.execute(prepared(sql`
    INSERT INTO fleet (id, customer_id, offer_code, characteristics, created_at, updated_at)
    VALUES (${f.id}, ${f.customerId}, ${f.offerCode}, ${json(f.characteristics)}::jsonb, ${now}, ${now})`));
}

export async function setFleetCharacteristics(tx: Tx, id: string, characteristics: JsonValue[], now: Date): Promise<void> {
  await tx.execute(sql`
    UPDATE fleet SET characteristics = ${json(characteristics)}::jsonb, updated_at = ${now} WHERE id = ${id}`);
}
