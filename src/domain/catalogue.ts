import { z } from "zod";

/**
 * The partner's product catalogue: which Orange offer codes it sells and the plan each maps to.
 * Loaded once at start from a JSON file (CATALOGUE_FILE); an order or swap naming a code that
 * is not here fails with a reason.
 */
export const CatalogueFileSchema = z.object({
  offers: z
    .array(
      z.object({
        code: z.string().min(1).describe("Orange offer code (productOffering.externalReference.id)"),
        name: z.string().min(1).describe("name sent as productOffering.name"),
        plan: z.string().min(1).describe("the partner's own plan identifier"),
      }),
    )
    .min(1),
});

export interface Offer {
  code: string;
  name: string;
  plan: string;
}

export interface Catalogue {
  find(code: string): Offer | undefined;
  codes(): string[];
}

export function createCatalogue(input: unknown): Catalogue {
  const { offers } = CatalogueFileSchema.parse(input);
  const byCode = new Map<string, Offer>();
  for (const offer of offers) {
    if (byCode.has(offer.code)) throw new Error(`catalogue: offer code ${offer.code} is listed twice`);
    byCode.set(offer.code, offer);
  }
  return {
    find: (code) => byCode.get(code),
    codes: () => [...byCode.keys()],
  };
}
