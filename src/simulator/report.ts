/**
 * Reports of simulator runs: text for the terminal, JSON for machines, JUnit XML for a partner's
 * CI (GitLab, Jenkins, GitHub test reporters), one self-contained HTML page for people (no
 * external assets: it is attached to tickets and opened offline).
 */
import type { CheckResult, RunReport, ScenarioSummary } from "./runner.js";

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

const isOk = (s: Summary): boolean => s.failed === 0 && s.skipped === 0;

const summaryText = (s: Summary): string =>
  `${s.scenarios} scenario(s), ${s.checks} check(s): ${s.passed} passed, ${s.failed} failed, ${s.skipped} skipped`;

const countsText = (s: Summary): string =>
  `${s.checks} check(s): ${s.passed} passed${s.failed ? `, ${s.failed} failed` : ""}${s.skipped ? `, ${s.skipped} skipped` : ""}`;

const webhook = (r: RunReport): boolean => r.provisioning?.mode === "webhook";

const runTitle = (r: RunReport): string =>
  `${r.target} · ordering ${r.modes.ordering} · update ${r.modes.update}${webhook(r) ? " · provisioning webhook" : ""} · offer ${r.offer}`;

/** The lines saying which application the run had, and which scenarios it could not play and why. */
const provisioningLines = (r: RunReport): string[] => [
  ...(r.provisioning?.application ? [`application: ${r.provisioning.application}`] : []),
  ...(r.notPlayed ?? []).map((n) => `not played: ${n.scenario}: ${n.reason}`),
];

const versionText = (r: RunReport): string =>
  r.targetVersion.version !== undefined ? `${r.targetVersion.version} (${r.targetVersion.source})` : r.targetVersion.source;

const checkName = (c: CheckResult): string => `${c.scenario} › ${c.step} › ${c.check}`;

/**
 * The terminal report. Quiet (default): per run, the failed and skipped checks with what was
 * expected, what came back and the curl, then the summary. `verbose`: one line per check.
 */
export function renderText(runs: RunReport[], opts: { color: boolean; verbose?: boolean }): string {
  const paint = (color: keyof typeof COLORS, text: string) => (opts.color ? `${COLORS[color]}${text}${COLORS.reset}` : text);
  const lines: string[] = [];
  for (const run of runs) {
    lines.push(`== ${runTitle(run)}`, `   target version: ${versionText(run)}`, ...provisioningLines(run).map((l) => `   ${l}`));
    for (const c of run.checks) {
      if (c.outcome === "pass" && !opts.verbose) continue;
      const ms = c.ms !== undefined ? paint("dim", ` (${c.ms} ms)`) : "";
      lines.push(`${paint(c.outcome, LABEL[c.outcome])} ${checkName(c)}${ms}`);
      if (c.outcome !== "pass") {
        lines.push(`     expected: ${c.expected}`, `     got:      ${c.actual}`);
        if (c.curl) lines.push(`     ${c.curl}`);
      }
    }
    const ok = isOk(run.summary);
    lines.push(paint(ok ? "pass" : "fail", `${ok ? "OK" : "FAILED"}: ${summaryText(run.summary)} in ${run.durationMs} ms`));
    const bad = run.scenarios.filter((s) => !isOk(s.summary));
    if (bad.length > 0) lines.push(`   scenarios with failures: ${bad.map((s) => `${s.name} (${countsText(s.summary)})`).join(", ")}`);
    if (run.modeHint) lines.push(paint("skip", run.modeHint));
    lines.push("");
  }
  const all = total(runs);
  const ok = isOk(all);
  lines.push(paint(ok ? "pass" : "fail", `overall ${ok ? "OK" : "FAILED"}: ${runs.length} run(s), ${summaryText(all)}`));
  return lines.join("\n");
}

export function renderJson(runs: RunReport[]): string {
  return `${JSON.stringify({ summary: total(runs), runs }, null, 2)}\n`;
}

// ---------------------------------------------------------------------------------------------
// JUnit XML

/** Characters XML 1.0 forbids (control characters, lone surrogates, U+FFFE/F) become U+FFFD. */
const NOT_XML = /[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;
const XML_TEXT: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;" };
const XML_ATTR: Record<string, string> = { ...XML_TEXT, '"': "&quot;", "'": "&apos;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;" };
const xmlText = (text: string): string => text.replace(NOT_XML, "\uFFFD").replace(/[&<>]/g, (ch) => XML_TEXT[ch] ?? ch);
const xmlAttr = (text: string): string => text.replace(NOT_XML, "\uFFFD").replace(/[&<>"'\t\n\r]/g, (ch) => XML_ATTR[ch] ?? ch);
const attrs = (values: Record<string, string | number>): string =>
  Object.entries(values)
    .map(([k, v]) => ` ${k}="${xmlAttr(String(v))}"`)
    .join("");
const seconds = (ms: number | undefined): string => ((ms ?? 0) / 1000).toFixed(3);
/** CI pages show the message on one line: keep it readable. */
const clip = (text: string, max = 1000): string => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

/** The scenarios of a run, each with its checks, in the order played. */
function groupByScenario(run: RunReport): { scenario: ScenarioSummary; checks: CheckResult[] }[] {
  const groups = new Map<string, { scenario: ScenarioSummary; checks: CheckResult[] }>();
  for (const s of run.scenarios) groups.set(s.name, { scenario: s, checks: [] });
  for (const c of run.checks) {
    let group = groups.get(c.scenario);
    if (!group) {
      group = { scenario: { name: c.scenario, durationMs: 0, summary: { scenarios: 1, checks: 0, passed: 0, failed: 0, skipped: 0 } }, checks: [] };
      groups.set(c.scenario, group);
    }
    group.checks.push(c);
  }
  return [...groups.values()];
}

/**
 * One `<testsuite>` per scenario and run, one `<testcase>` per check; a failed check has a
 * `<failure>` (message: expected and got; text: the same and the curl), a skipped one `<skipped>`.
 */
export function renderJunit(runs: RunReport[]): string {
  const all = total(runs);
  const totalMs = runs.reduce((sum, r) => sum + r.durationMs, 0);
  const lines = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites${attrs({ name: "orange-simulate", tests: all.checks, failures: all.failed, errors: 0, skipped: all.skipped, time: seconds(totalMs) })}>`,
  ];
  let suiteId = 0;
  for (const run of runs) {
    const modes = `ordering ${run.modes.ordering}, update ${run.modes.update}${webhook(run) ? ", provisioning webhook" : ""}`;
    const pkg = `orange-simulate.${run.modes.ordering}-${run.modes.update}${webhook(run) ? "-webhook" : ""}`;
    const properties = [
      ["target", run.target],
      ["target.version", versionText(run)],
      ["ordering", run.modes.ordering],
      ["update", run.modes.update],
      ...(webhook(run) ? [["provisioning", "webhook"], ...(run.provisioning.application ? [["application", run.provisioning.application]] : [])] : []),
      ["offer", run.offer],
      ["offers", run.offers.join(",")],
      ...(run.modeHint ? [["hint", run.modeHint]] : []),
    ];
    for (const { scenario, checks } of groupByScenario(run)) {
      const failures = checks.filter((c) => c.outcome === "fail").length;
      const skipped = checks.filter((c) => c.outcome === "skip").length;
      lines.push(
        `  <testsuite${attrs({
          name: `${scenario.name} [${modes}]`,
          tests: checks.length,
          failures,
          errors: 0,
          skipped,
          time: seconds(scenario.durationMs),
          timestamp: run.startedAt.replace(/\.\d+Z$/, ""),
          id: suiteId++,
        })}>`,
        "    <properties>",
        ...properties.map(([name, value]) => `      <property${attrs({ name: name ?? "", value: value ?? "" })}/>`),
        "    </properties>",
      );
      const classname = `${pkg}.${scenario.name.replace(/\./g, "_")}`;
      for (const c of checks) {
        const head = `    <testcase${attrs({ classname, name: `${c.step} › ${c.check}`, time: seconds(c.ms) })}`;
        if (c.outcome === "pass") {
          lines.push(`${head}/>`);
          continue;
        }
        const message = clip(`expected ${c.expected}, got ${c.actual}`);
        const detail = [`expected: ${c.expected}`, `got:      ${c.actual}`, ...(c.curl ? [c.curl] : [])].join("\n");
        lines.push(
          `${head}>`,
          c.outcome === "fail"
            ? `      <failure${attrs({ message, type: "check" })}>${xmlText(detail)}</failure>`
            : `      <skipped${attrs({ message })}/>`,
          "    </testcase>",
        );
      }
      lines.push("  </testsuite>");
    }
  }
  lines.push("</testsuites>", "");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// HTML

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (ch) => ESCAPES[ch] ?? ch);

const CSS = `
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}
h1{font-size:1.4rem;margin-bottom:.3rem}h2{font-size:1.1rem;margin-top:2rem}
.meta{color:#555;margin:.2rem 0}
.summary{display:flex;gap:1rem;flex-wrap:wrap;margin:.6rem 0}
.card{padding:.6rem 1rem;border-radius:6px;background:#fff;border:1px solid #ddd}
.card b{font-size:1.3rem;display:block}
.ok{color:#17692c}.bad{color:#b3261e}.warn{color:#8a5a00}
.hint{background:#fff6e0;border:1px solid #e8c66a;padding:.4rem .7rem;border-radius:6px}
.filter{position:sticky;top:0;background:#fafafa;padding:.4rem 0;z-index:1}
details.scenario{background:#fff;border:1px solid #ddd;border-radius:6px;margin:.4rem 0}
details.scenario>summary{padding:.4rem .7rem;cursor:pointer;font-weight:600}
details.scenario>summary small{font-weight:normal;color:#555}
table{border-collapse:collapse;width:100%}
td,th{border-top:1px solid #eee;padding:.3rem .5rem;text-align:left;vertical-align:top}
tr.fail{background:#fdecea}tr.skip{background:#fff6e0}
.badge{font-weight:bold;font-size:.8rem}
pre{white-space:pre-wrap;word-break:break-all;background:#f3f3f3;padding:.5rem;margin:.3rem 0}
td details summary{cursor:pointer;color:#555}
body.failures-only tr.pass,body.failures-only details.scenario.ok{display:none}
`;

/** The filter: plain inline JS (no external asset), a class on <body> that the CSS above reads. */
const SCRIPT = `document.getElementById("failures-only").addEventListener("change",function(e){document.body.classList.toggle("failures-only",e.target.checked);});`;

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
    `<td>${escapeHtml(c.step)}${c.title ? `<br><small>${escapeHtml(c.title)}</small>` : ""}</td>` +
    `<td><details${c.outcome === "pass" ? "" : " open"}><summary>${escapeHtml(c.check)}</summary>${details}</details></td>` +
    `<td>${c.ms !== undefined ? `${c.ms} ms` : ""}</td></tr>`
  );
}

/** One collapsible section per scenario, opened when it has a failed or skipped check. */
function scenarioSection(scenario: ScenarioSummary, checks: CheckResult[]): string {
  const ok = isOk(scenario.summary);
  const counts = countsText(scenario.summary);
  return [
    `<details class="scenario ${ok ? "ok" : "bad"}"${ok ? "" : " open"}>`,
    `<summary><span class="${ok ? "ok" : "bad"}">${ok ? "✓" : "✗"}</span> ${escapeHtml(scenario.name)} <small>— ${escapeHtml(counts)} · ${scenario.durationMs} ms${scenario.title ? ` · ${escapeHtml(scenario.title)}` : ""}</small></summary>`,
    `<table><thead><tr><th></th><th>step</th><th>check</th><th>time</th></tr></thead><tbody>`,
    ...checks.map(checkRow),
    `</tbody></table></details>`,
  ].join("\n");
}

function runSection(run: RunReport): string {
  return [
    `<h2>${escapeHtml(runTitle(run))}</h2>`,
    `<p class="meta">target <b>${escapeHtml(run.target)}</b> · version <b>${escapeHtml(versionText(run))}</b> · ordering ${run.modes.ordering} · update ${run.modes.update} · offer ${escapeHtml(run.offer)} · offer codes ${escapeHtml(run.offers.join(", "))}</p>`,
    `<p class="meta">${escapeHtml(run.startedAt)} → ${escapeHtml(run.finishedAt)} (${run.durationMs} ms)</p>`,
    run.modeHint ? `<p class="hint">${escapeHtml(run.modeHint)}</p>` : "",
    ...provisioningLines(run).map((l) => `<p class="${l.startsWith("not played") ? "hint" : "meta"}">${escapeHtml(l)}</p>`),
    summaryCards(run.summary),
    ...groupByScenario(run).map(({ scenario, checks }) => scenarioSection(scenario, checks)),
  ].join("\n");
}

export function renderHtml(runs: RunReport[]): string {
  const all = total(runs);
  const started = runs[0]?.startedAt ?? new Date().toISOString();
  const finished = runs.at(-1)?.finishedAt ?? started;
  const utc = (iso: string) => iso.replace("T", " ").replace(/\.\d+Z$/, " UTC");
  const ok = isOk(all);
  return [
    "<!doctype html>",
    '<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>Orange simulator report: ${ok ? "OK" : "FAILED"}</title>`,
    `<style>${CSS}</style></head><body>`,
    `<h1 class="${ok ? "ok" : "bad"}">Orange simulator report: ${ok ? "OK" : "FAILED"}</h1>`,
    `<p class="meta">run of <time datetime="${escapeHtml(started)}">${escapeHtml(utc(started))}</time> (finished ${escapeHtml(utc(finished))}) · ${runs.length} run(s)</p>`,
    ...runs.map((r) => `<p class="meta">target ${escapeHtml(runTitle(r))} · version ${escapeHtml(versionText(r))}</p>`),
    summaryCards(all),
    `<div class="filter"><label><input type="checkbox" id="failures-only"> show failed and skipped checks only</label></div>`,
    ...runs.map(runSection),
    `<script>${SCRIPT}</script>`,
    "</body></html>",
    "",
  ].join("\n");
}
