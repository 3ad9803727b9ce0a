/**
 * Reading the repository's Markdown for the documentation tests: the files, their links and
 * headings, the worked examples of docs/ and the tested command blocks of the README.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { parseContractExamples, type ContractExample } from "../../src/contract-examples.js";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

const SKIPPED_DIRS = new Set(["node_modules", "dist", ".git", ".data", "coverage", "generated"]);

/** Files under `dir` (repository-relative paths), build output and dependencies left out. */
export function repositoryFiles(dir = "", accept: (path: string) => boolean = () => true): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const path = dir === "" ? entry.name : `${dir}/${entry.name}`;
    if (entry.isDirectory()) {
      if (!SKIPPED_DIRS.has(entry.name)) out.push(...repositoryFiles(path, accept));
    } else if (entry.isFile() && accept(path)) {
      out.push(path);
    }
  }
  return out.sort();
}

export function markdownFiles(): string[] {
  return repositoryFiles("", (path) => path.endsWith(".md"));
}

export function read(path: string): string {
  return readFileSync(join(ROOT, path), "utf8");
}

export function relativeToRoot(absolute: string): string {
  return relative(ROOT, absolute);
}

/** The text outside fenced code blocks and inline code, where Markdown links live. */
function prose(markdown: string): string {
  return markdown.replace(/^```[\s\S]*?^```/gm, "").replace(/`[^`\n]*`/g, "");
}

/** Link targets: `[text](target)`, `[text]: target` and `<scheme://…>` autolinks. */
export function links(markdown: string): string[] {
  const text = prose(markdown);
  const out: string[] = [];
  for (const m of text.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) out.push(m[1]!);
  for (const m of text.matchAll(/^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$/gm)) out.push(m[1]!);
  for (const m of text.matchAll(/<([a-z][a-z0-9+.-]*:\/\/[^>\s]+)>/gi)) out.push(m[1]!);
  return out;
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens. */
export function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/<[^>]+>/g, "")
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");
}

/** The anchors of a Markdown file's headings, with GitHub's -1, -2… for repeated ones. */
export function anchors(markdown: string): Set<string> {
  const out = new Set<string>();
  const seen = new Map<string, number>();
  for (const m of markdown.replace(/^```[\s\S]*?^```/gm, "").matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const base = slug(m[1]!.replace(/`/g, ""));
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

export interface Example extends ContractExample {
  file: string;
}

/** The worked examples of a Markdown file: each ```json block announced by `<!-- example NAME (Schema) -->`. */
export function examples(file: string): Example[] {
  return parseContractExamples(read(file)).map((e) => ({ file, ...e }));
}

export function jsonBlockCount(markdown: string): number {
  return [...markdown.matchAll(/^```json\s*$/gm)].length;
}

export interface CommandBlock {
  name: string;
  code: string;
}

/** The README's tested shell blocks, in order: each ```sh block announced by `<!-- readme-test: NAME -->`. */
export function readmeBlocks(readme: string): CommandBlock[] {
  return [...readme.matchAll(/<!--\s*readme-test:\s*([\w-]+)\s*-->\n```sh\n([\s\S]*?)\n```/g)].map((m) => ({
    name: m[1]!,
    code: m[2]!,
  }));
}

/** The text of a `## heading` section, up to the next heading of the same level. */
export function section(markdown: string, heading: string): string {
  const start = markdown.indexOf(`\n## ${heading}\n`);
  if (start < 0) throw new Error(`no section "## ${heading}"`);
  const next = markdown.indexOf("\n## ", start + 1);
  return markdown.slice(start, next < 0 ? undefined : next);
}
