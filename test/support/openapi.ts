import { readFileSync } from "node:fs";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";
import { OPENAPI_FILE } from "../../src/openapi.js";

/**
 * Checks values against the schemas of an OpenAPI 3.1 document (JSON Schema 2020-12), as an
 * integrator's validator or code generator would read them: the document itself, not the zod
 * schemas it was generated from.
 */

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JSON document walked by key
export type OpenApiJson = any;

const DOC_ID = "https://openapi.local/openapi.json";

// ajv-formats is CommonJS: its default export is the module object under ESM.
const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ?? addFormatsModule) as (ajv: Ajv2020) => void;

export function readCommittedOpenApi(): OpenApiJson {
  return JSON.parse(readFileSync(OPENAPI_FILE, "utf8"));
}

export interface SchemaCheck {
  /** The problems of `value` against `schema` (a schema object of the document), [] when valid. */
  (schema: OpenApiJson, value: unknown): string[];
}

export function schemaChecker(doc: OpenApiJson): SchemaCheck {
  // strict: false: OpenAPI's own keywords (example, discriminator…) may sit in its schemas.
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema({ $id: DOC_ID, components: doc.components });
  const compiled = new Map<string, ReturnType<Ajv2020["compile"]>>();
  return (schema, value) => {
    const text = JSON.stringify(schema).replaceAll('"#/components/', `"${DOC_ID}#/components/`);
    const validate = compiled.get(text) ?? ajv.compile(JSON.parse(text));
    compiled.set(text, validate);
    if (validate(value)) return [];
    return (validate.errors ?? []).map((e) => `${e.instancePath || "$"} ${e.message ?? ""} ${JSON.stringify(e.params)}`);
  };
}
