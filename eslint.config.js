import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["node_modules", "test/generated", ".data", "coverage", "dist", "openapi"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "no-console": ["error", { allow: ["error"] }],
    },
  },
  { files: ["bench/**", "chaos/**", "scripts/**"], rules: { "no-console": "off" } },
  // Plain JavaScript run by node (TypeScript files get node's globals from @types/node).
  { files: ["bin/**"], languageOptions: { globals: { process: "readonly" } } },
  // The console's script runs in the browser: the browser's globals it uses.
  {
    files: ["src/console/static/**"],
    languageOptions: {
      globals: Object.fromEntries(
        ["document", "window", "location", "sessionStorage", "fetch", "URLSearchParams", "FormData", "Node", "setTimeout", "clearTimeout"].map(
          (g) => [g, "readonly"],
        ),
      ),
    },
  },
);
