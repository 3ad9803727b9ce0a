#!/usr/bin/env node
// `npx orange-simulate …`: the simulator's CLI (src/simulator/cli.ts), run through tsx, a
// dependency of this package, so that no build step is needed.
import { tsImport } from "tsx/esm/api";

const { cli } = await tsImport("../src/simulator/cli.ts", import.meta.url);
process.exit(await cli(process.argv.slice(2)));
