/**
 * Reading licences as Orange consults them (userService GET): a fleet's, some by id, one.
 */
import type { Db } from "../db/sql.js";
import * as licences from "./licences.dal.js";
import type { LicenceRecord } from "./licences.dal.js";
import { orderLike } from "./updates.js";

export type { LicenceRecord };

export function createLicenceQueries(deps: { db: Db }) {
  const { db } = deps;
  return {
    /** Licences of a fleet in creation order; null when the fleet does not exist. */
    listByFleet: (fleetId: string): Promise<LicenceRecord[] | null> => licences.listFleetLicences(db, fleetId),
    /** The licences that exist among `ids`, in the order asked. */
    listByIds: async (ids: string[]): Promise<LicenceRecord[]> => orderLike(await licences.selectLicences(db, ids), ids),
    getById: async (id: string): Promise<LicenceRecord | null> => (await licences.selectLicences(db, [id]))[0] ?? null,
  };
}

export type LicenceQueries = ReturnType<typeof createLicenceQueries>;
