/**
 * The SQL of customers and their contacts, one statement per function, in the caller's
 * transaction.
 */
import { prepared, sql, type Tx } from "../db/sql.js";
import type { JsonObject, JsonValue } from "../lib/json.js";

export interface CustomerData {
  orangeRef: string;
  tradingName?: string;
  name?: string;
  organizationCode?: string;
  postalAddress?: JsonObject;
  characteristics?: JsonValue[];
}

export interface ContactData {
  orangeRef?: string;
  role?: string;
  title?: string;
  givenName?: string;
  familyName?: string;
  email?: string;
  fixedTelephoneNumber?: JsonObject;
  mobileNumber?: JsonObject;
  characteristics?: JsonValue[];
}

const json = (value: JsonValue | undefined): string | null => (value === undefined ? null : JSON.stringify(value));

/** Creates the customer, or updates the fields sent of the one with that Orange reference; its id. */
export async function upsertCustomer(tx: Tx, id: string, c: CustomerData, now: Date): Promise<string> {
  const [row] = await tx.query<{ id: string }>(prepared(sql`
    INSERT INTO customer (id, orange_ref, trading_name, name, organization_code, postal_address,
                          characteristics, created_at, updated_at)
    VALUES (${id}, ${c.orangeRef}, ${c.tradingName ?? null}, ${c.name ?? null},
            ${c.organizationCode ?? null}, ${json(c.postalAddress)}::jsonb, ${json(c.characteristics)}::jsonb,
            ${now}, ${now})
    ON CONFLICT (orange_ref) DO UPDATE SET
      trading_name      = COALESCE(EXCLUDED.trading_name, customer.trading_name),
      name              = COALESCE(EXCLUDED.name, customer.name),
      organization_code = COALESCE(EXCLUDED.organization_code, customer.organization_code),
      postal_address    = COALESCE(EXCLUDED.postal_address, customer.postal_address),
      characteristics   = COALESCE(EXCLUDED.characteristics, customer.characteristics),
      updated_at        = EXCLUDED.updated_at
    RETURNING id`));
  return row!.id;
}

/** The customer's contact with this Orange id, locked. */
export async function lockContactByOrangeRef(tx: Tx, customerId: string, orangeRef: string): Promise<string | undefined> {
  const [row] = await tx.query<{ id: string }>(prepared(sql`
    SELECT id FROM contact WHERE customer_id = ${customerId} AND orange_ref = ${orangeRef} FOR UPDATE`));
  return row?.id;
}

/** The customer's oldest contact without Orange id of this role and e-mail (any case), locked. */
export async function lockContactByEmail(tx: Tx, customerId: string, role: string | undefined, email: string): Promise<string | undefined> {
  const [row] = await tx.query<{ id: string }>(prepared(sql`
    SELECT id FROM contact
    WHERE customer_id = ${customerId} AND orange_ref IS NULL
      AND role IS NOT DISTINCT FROM ${role ?? null} AND lower(email) = lower(${email})
    ORDER BY created_at LIMIT 1 FOR UPDATE`));
  return row?.id;
}

/** Updates the fields sent; the others keep their value. */
export async function updateContact(tx: Tx, id: string, c: ContactData, now: Date): Promise<void> {
  await tx.execute(prepared(sql`
    UPDATE contact SET
      role = COALESCE(${c.role ?? null}, role),
      title = COALESCE(${c.title ?? null}, title),
      given_name = COALESCE(${c.givenName ?? null}, given_name),
      family_name = COALESCE(${c.familyName ?? null}, family_name),
      email = COALESCE(${c.email ?? null}, email),
      fixed_telephone_number = COALESCE(${json(c.fixedTelephoneNumber)}::jsonb, fixed_telephone_number),
      mobile_number = COALESCE(${json(c.mobileNumber)}::jsonb, mobile_number),
      characteristics = COALESCE(${json(c.characteristics)}::jsonb, characteristics),
      updated_at = ${now}
    WHERE id = ${id}`));
}

/**
 * Creates the contact; its id. ON CONFLICT covers two concurrent orders creating the same Orange
 * contact: the second gets the first's id.
 */
export async function insertContact(tx: Tx, id: string, customerId: string, c: ContactData, now: Date): Promise<string> {
  const [row] = await tx.query<{ id: string }>(prepared(sql`
    INSERT INTO contact (id, customer_id, orange_ref, role, title, given_name, family_name, email,
                         fixed_telephone_number, mobile_number, characteristics, created_at, updated_at)
    VALUES (${id}, ${customerId}, ${c.orangeRef ?? null}, ${c.role ?? null}, ${c.title ?? null},
            ${c.givenName ?? null}, ${c.familyName ?? null}, ${c.email ?? null},
            ${json(c.fixedTelephoneNumber)}::jsonb, ${json(c.mobileNumber)}::jsonb,
            ${json(c.characteristics)}::jsonb, ${now}, ${now})
    ON CONFLICT (customer_id, orange_ref) DO UPDATE SET updated_at = EXCLUDED.updated_at
    RETURNING id`));
  return row!.id;
}

/** The customer with this Orange reference, locked. */
export async function lockCustomerByOrangeRef(tx: Tx, orangeRef: string): Promise<string | undefined> {
  const [row] = await tx.query<{ id: string }>(prepared(sql`SELECT id FROM customer WHERE orange_ref = ${orangeRef} FOR UPDATE`));
  return row?.id;
}
