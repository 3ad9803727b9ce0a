import { writeFileSync } from "node:fs";
import { generateOpenApi, OPENAPI_FILE } from "../src/openapi.js";

writeFileSync(OPENAPI_FILE, await generateOpenApi());
console.log(`wrote ${OPENAPI_FILE}`);
