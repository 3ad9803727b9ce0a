/**
 * Reports of simulator runs: text for the terminal, JSON for machines, one self-contained HTML
 * page for people (no external assets: it is attached to tickets and opened offline).
 */
import type { CheckResult, RunReport } from "./runner.js";

type Summary = RunReport["summary"];

const COLORS = { pass: "\x1b[32m", fail: "\x1b[31m", skip: "\x1b[33m", dim: "\x1b[2m", reset: "\x1b[0m" } as const;
const LABEL = { pass: "PASS", fail: "FAIL", skip: "SKIP" } as const;

function total(runs: readonly RunReport[]): Summary {
  return runs.reduce<Summary>(
    (acc, r) => ({
      scenarios: acc.scenarios + r.summary.scenarios,
      checks: acc.checks + r.summary.checks,
      passed: acc.passed + r.summary.passed,
      failed: acc.failed + r.summary.failed,
      skipped: acc.skipped + r.summary.skipped,
    }),
    { scenarios: 0, checks: 0, passed: 0, failed: 0, skipped: 0 },
  );
}

const summaryText = (s: Summary): string =>
  `${s.scenarios} scenario(s), ${s.checks} check(s): ${s.passed} passed, ${s.failed} failed, ${s.skipped} skipped`;

const runTitle = (r: RunReport): string => `${r.target} · ordering ${r.modes.ordering} · update ${r.modes.update} · offer ${r.offer}`;

const checkName = (c: CheckResult): string => `${c.scenario} › ${c.step} › ${c.check}`;

/** One line per check; failures and skips add what was expected, what came back and the curl. */
export function renderText(runs: RunReport[], opts: { color: boolean }): string {
  const paint = (color: keyof typeof COLORS, text: string) => (opts.color ? `${COLORS[color]}${text}${COLORS.reset}` : text);
  const lines: string[] = [];
  for (const run of runs) {
    lines.push(`== ${runTitle(run)}`);
    for (const c of run.checks) {
      const ms = c.ms !== undefined ? paint("dim", ` (${c.ms} ms)`) : "";
      lines.push(`${paint(c.outcome, LABEL[c.outcome])} ${checkName(c)}${ms}`);
      if (c.outcome !== "pass") {
        lines.push(`     expected: ${c.expected}`, `     got:      ${c.actual}`);
        if (c.curl) lines.push(`     ${c.curl}`);
      }
    }
    const ok = run.summary.failed === 0 && run.summary.skipped === 0;
    lines.push(paint(ok ? "pass" : "fail", `${ok ? "OK" : "FAILED"}: ${summaryText(run.summary)} in ${run.durationMs} ms`), "");
  }
  const all = total(runs);
  const ok = all.failed === 0 && all.skipped === 0;
  lines.push(paint(ok ? "pass" : "fail", `overall ${ok ? "OK" : "FAILED"}: ${runs.length} run(s), ${summaryText(all)}`));
  return lines.join("\n");
}

export function renderJson(runs: RunReport[]): string {
  return `${JSON.stringify({ summary: total(runs), runs }, null, 2)}\n`;
}

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (ch) => ESCAPES[ch] ?? ch);

const CSS = `
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
.summary{display:flex;gap:1rem;flex-wrap:wrap}
.card{padding:.6rem 1rem;border-radius:6px;background:#fff;border:1px solid #ddd}
.card b{font-size:1.3rem;display:block}
.ok{color:#17692c}.bad{color:#b3261e}.warn{color:#8a5a00}
table{border-collapse:collapse;width:100%;background:#fff}
td,th{border-bottom:1px solid #eee;padding:.3rem .5rem;text-align:left;vertical-align:top}
tr.fail{background:#fdecea}tr.skip{background:#fff6e0}
.badge{font-weight:bold;font-size:.8rem}
pre{white-space:pre-wrap;word-break:break-all;background:#f3f3f3;padding:.5rem;margin:.3rem 0}
details summary{cursor:pointer;color:#555}
`;

function card(label: string, value: number, cls = ""): string {
  return `<div class="card"><b class="${cls}">${value}</b>${escapeHtml(label)}</div>`;
}

function summaryCards(s: Summary): string {
  return `<div class="summary">${card("scenarios", s.scenarios)}${card("checks", s.checks)}${card("passed", s.passed, "ok")}${card("failed", s.failed, s.failed ? "bad" : "")}${card("skipped", s.skipped, s.skipped ? "warn" : "")}</div>`;
}

function checkRow(c: CheckResult): string {
  const cls = { pass: "ok", fail: "bad", skip: "warn" }[c.outcome];
  const details = [
    `<pre>expected: ${escapeHtml(c.expected)}\ngot:      ${escapeHtml(c.actual)}</pre>`,
    c.curl ? `<pre>${escapeHtml(c.curl)}</pre>` : "",
  ].join("");
  return (
    `<tr class="${c.outcome}"><td class="badge ${cls}">${LABEL[c.outcome]}</td>` +
    `<td>${escapeHtml(c.scenario)}</td><td>${escapeHtml(c.step)}${c.title ? `<br><small>${escapeHtml(c.title)}</small>` : ""}</td>` +
    `<td><details${c.outcome === "pass" ? "" : " open"}><summary>${escapeHtml(c.check)}</summary>${details}</details></td>` +
    `<td>${c.ms !== undefined ? `${c.ms} ms` : ""}</td></tr>`
  );
}

/** Failures first, then skips, then passes; the order of the run within each group. */
function byOutcome(checks: readonly CheckResult[]): CheckResult[] {
  const rank = { fail: 0, skip: 1, pass: 2 } as const;
  return checks.map((c, i) => ({ c, i })).sort((a, b) => rank[a.c.outcome] - rank[b.c.outcome] || a.i - b.i).map(({ c }) => c);
}

function runSection(run: RunReport): string {
  return [
    `<h2>${escapeHtml(runTitle(run))}</h2>`,
    `<p>${escapeHtml(run.startedAt)} → ${escapeHtml(run.finishedAt)} (${run.durationMs} ms)</p>`,
    summaryCards(run.summary),
    `<table><thead><tr><th></th><th>scenario</th><th>step</th><th>check</th><th>time</th></tr></thead><tbody>`,
    ...byOutcome(run.checks).map(checkRow),
    `</tbody></table>`,
  ].join("\n");
}

export function renderHtml(runs: RunReport[]): string {
  const all = total(runs);
  const ok = all.failed === 0 && all.skipped === 0;
  return [
    "<!doctype html>",
    '<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>Orange simulator report: ${ok ? "OK" : "FAILED"}</title>`,
    `<style>${CSS}</style></head><body>`,
    `<h1 class="${ok ? "ok" : "bad"}">Orange simulator report: ${ok ? "OK" : "FAILED"}</h1>`,
    summaryCards(all),
    ...runs.map(runSection),
    "</body></html>",
    "",
  ].join("\n");
}
