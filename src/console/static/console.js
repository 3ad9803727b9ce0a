// The operators' console: a small ES module over the admin API (/admin/v1), no framework, no
// build step. Everything shown is built as DOM nodes with text content (never innerHTML), every
// link is a #/ route of this page built from encoded ids. The admin token lives in
// sessionStorage (gone with the tab) and travels only in the Authorization header.

const API = "/admin/v1";
const TOKEN_KEY = "orange-partner-console-token";
const PAGE = 20;

const main = document.getElementById("main");
const topBar = document.getElementById("top");
const toastBox = document.getElementById("toast");

// ---------------------------------------------------------------------------------------------
// DOM helpers: text nodes only

/** An element: props are attributes (never a URL from data: see link()), `on…` listeners, children text or nodes. */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A link to a view of this page: #/segment/segment?query, each part encoded. */
function href(segments, query) {
  const path = segments.map((s) => encodeURIComponent(String(s))).join("/");
  const q = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== "")).toString() : "";
  return `#/${path}${q ? `?${q}` : ""}`;
}

function link(segments, text, query) {
  return h("a", { href: href(segments, query) }, text ?? segments[segments.length - 1]);
}

/** A partner id as a link to its view, from its prefix. */
const ID_VIEWS = { po: "orders", upd: "updates", cu: "customers", fl: "fleets", us: "licences", ev: "events", pc: "provisioning" };
function idLink(id) {
  if (id === undefined || id === null || id === "") return "";
  const view = ID_VIEWS[String(id).split("_")[0]];
  return view ? link([view, id], id) : String(id);
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: iso }, d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }));
}

function age(seconds) {
  const s = Math.round(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

function badge(state) {
  return h("span", { class: `badge state-${String(state).replace(/[^a-z-]/gi, "")}` }, state);
}

function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function section(title, ...children) {
  return h("section", null, h("h2", null, title), ...children);
}

/** A table: columns [header, row => cell]; an empty list says so. */
function table(rows, columns, empty = "None.") {
  if (!rows || rows.length === 0) return h("p", { class: "empty" }, empty);
  return h(
    "table",
    null,
    h("thead", null, h("tr", null, columns.map(([title]) => h("th", null, title)))),
    h("tbody", null, rows.map((r) => h("tr", null, columns.map(([, cell]) => h("td", null, cell(r)))))),
  );
}

/** Label/value pairs, those without a value left out. */
function fields(pairs) {
  return h(
    "dl",
    { class: "fields" },
    pairs.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => [h("dt", null, k), h("dd", null, v)]),
  );
}

function person(p) {
  if (!p) return undefined;
  const name = [p.givenName, p.familyName].filter(Boolean).join(" ");
  return [name, p.email ? ` <${p.email}>` : "", p.id ? ` (${p.id})` : ""].join("").trim() || JSON.stringify(p);
}

function toast(message, kind = "ok") {
  toastBox.textContent = message;
  toastBox.className = kind;
  toastBox.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (toastBox.hidden = true), 6000);
}

// ---------------------------------------------------------------------------------------------
// The admin API

class ApiError extends Error {
  constructor(status, body) {
    super(body?.description ?? body?.message ?? `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

class LoggedOut extends Error {}

async function call(method, path, body, token = sessionStorage.getItem(TOKEN_KEY)) {
  const headers = { accept: "application/json", authorization: `Bearer ${token ?? ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${API}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  const text = await res.text();
  let data;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    data = { message: text };
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return { data, total: Number(res.headers.get("x-total-count") ?? Number.NaN) };
}

/** A call made for a view: a refused token sends the operator back to the login form. */
async function api(method, path, body) {
  try {
    return await call(method, path, body);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(`Your token was refused (${err.message}): log in again.`);
      throw new LoggedOut();
    }
    throw err;
  }
}

const get = (path, query) => api("GET", query ? `${path}?${new URLSearchParams(query)}` : path);

function errorBox(err) {
  const b = err instanceof ApiError ? err.body : undefined;
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", null, err instanceof ApiError ? `${err.status} ${b?.message ?? ""}` : "Error"),
    h("p", null, err.message),
    b?.code !== undefined ? h("p", { class: "muted" }, `code ${b.code}`) : null,
  );
}

/** Runs an operator's action; reports its outcome, then re-renders the current view. */
async function act(what, work) {
  try {
    const message = await work();
    toast(message ?? `${what}: done`);
    await render();
  } catch (err) {
    if (err instanceof LoggedOut) return;
    toast(`${what} failed: ${err.message}`, "bad");
  }
}

// ---------------------------------------------------------------------------------------------
// Login

function showLogin(message) {
  topBar.hidden = true;
  const input = h("input", { type: "password", name: "token", id: "token", autocomplete: "off", required: true, autofocus: true, spellcheck: "false" });
  const status = h("p", { class: "error-text", role: "alert", id: "login-message" }, message ?? "");
  const form = h(
    "form",
    {
      class: "login",
      id: "login",
      onsubmit: async (e) => {
        e.preventDefault();
        status.textContent = "Checking…";
        const token = input.value.trim();
        try {
          await call("GET", "/overview", undefined, token);
        } catch (err) {
          input.value = "";
          if (err instanceof ApiError && err.status === 401) status.textContent = `Wrong token: the server refused it (${err.message}).`;
          else if (err instanceof ApiError && err.status === 503) status.textContent = `The admin API is unavailable: ${err.message}`;
          else status.textContent = `Cannot reach the server: ${err.message}`;
          return;
        }
        sessionStorage.setItem(TOKEN_KEY, token);
        topBar.hidden = false;
        await render();
      },
    },
    h("h1", null, "Operators' console"),
    h("label", { for: "token" }, "Admin token (ADMIN_TOKEN)"),
    input,
    h("button", { type: "submit" }, "Log in"),
    status,
    h("p", { class: "muted" }, "Kept in this tab only (sessionStorage) and sent as Authorization: Bearer to the admin API."),
  );
  main.replaceChildren(form);
  input.focus();
}

// ---------------------------------------------------------------------------------------------
// Paging and filters

function pager(route, query, total, shown) {
  const offset = Number(query.offset ?? 0);
  const limit = Number(query.limit ?? PAGE);
  const to = offset + shown;
  return h(
    "nav",
    { class: "pager" },
    h("span", null, Number.isFinite(total) ? `${shown === 0 ? 0 : offset + 1}–${to} of ${total}` : `${shown} shown`),
    offset > 0 ? link(route, "← previous", { ...query, offset: Math.max(0, offset - limit) }) : null,
    Number.isFinite(total) && to < total ? link(route, "next →", { ...query, offset: to }) : null,
  );
}

/** A filter form: [name, label, options?]; submitting it changes the route's query. */
function filterForm(route, query, filters) {
  const inputs = filters.map(([name, label, options]) => {
    const control = options
      ? h("select", { name }, options.map((o) => h("option", { value: o, selected: query[name] === o }, o || "any")))
      : h("input", { name, value: query[name] ?? "", size: 18 });
    return h("label", null, label, control);
  });
  return h(
    "form",
    {
      class: "filters",
      onsubmit: (e) => {
        e.preventDefault();
        const next = {};
        for (const [k, v] of new FormData(e.target)) if (String(v).trim() !== "") next[k] = String(v).trim();
        location.hash = href(route, next);
      },
    },
    inputs,
    h("button", { type: "submit" }, "Filter"),
  );
}

// ---------------------------------------------------------------------------------------------
// Event actions

function eventActions(event) {
  if (event.state !== "dead") return "";
  const cell = h("span", { class: "actions" });
  const buttons = [
    h("button", { type: "button", "data-action": "resend", onclick: () => act(`Re-send ${event.id}`, async () => {
      await api("POST", `/events/${encodeURIComponent(event.id)}/resend`);
      return `Event ${event.id} re-sent: pending again, delivered before its fleet's later events`;
    }) }, "Re-send"),
    h("button", { type: "button", class: "secondary", "data-action": "discard", onclick: () => {
      const reason = h("input", { name: "reason", placeholder: "why (kept with the event)", maxlength: 1000, size: 24 });
      cell.replaceChildren(
        h("form", { class: "inline", onsubmit: (e) => {
          e.preventDefault();
          const why = reason.value.trim();
          act(`Discard ${event.id}`, async () => {
            await api("POST", `/events/${encodeURIComponent(event.id)}/discard`, why ? { reason: why } : {});
            return `Event ${event.id} discarded: never sent; its fleet's later events go out`;
          });
        } }, reason, h("button", { type: "submit", class: "danger" }, "Discard"), h("button", { type: "button", class: "secondary", onclick: () => cell.replaceChildren(...buttons) }, "Cancel")),
      );
      reason.focus();
    } }, "Discard"),
  ];
  return add(cell, buttons);
}

const eventColumns = [
  ["event", (e) => idLink(e.id)],
  ["type", (e) => e.type],
  ["state", (e) => badge(e.state)],
  ["fleet / order", (e) => [idLink(e.fleetId), e.fleetId && (e.orderId || e.updateId) ? " " : "", idLink(e.orderId ?? e.updateId)]],
  ["attempts", (e) => e.attempts],
  ["last answer", (e) => [e.lastStatus ?? "", e.lastError ? ` ${e.lastError}` : ""]],
  ["created", (e) => when(e.createdAt)],
];

// ---------------------------------------------------------------------------------------------
// Views

const STATES = {
  orders: ["acknowledged", "completed", "failed"],
  updates: ["acknowledged", "completed", "failed"],
  events: ["pending", "delivered", "dead", "discarded"],
  provisioning: ["queued", "sending", "waiting", "retrying", "done", "refused", "parked"],
};
const ALARMING = new Set(["failed", "dead", "parked", "refused"]);

function countsCard(title, route, counts) {
  return h(
    "div",
    { class: "card" },
    h("h3", null, link([route], title)),
    table(Object.entries(counts), [
      ["state", ([s]) => link([route], s, { state: s })],
      ["", ([s, n]) => h("span", { class: n > 0 && ALARMING.has(s) ? "alarm" : "" }, n)],
    ]),
  );
}

async function overview() {
  const { data: o } = await get("/overview");
  const pending = o.oldestPendingEvent;
  return [
    h("div", { class: "title" }, h("h1", null, "Overview"), h("span", { class: "muted" }, "read at ", when(o.at), " "), h("button", { type: "button", class: "secondary", onclick: () => render() }, "Refresh")),
    h(
      "div",
      { class: "cards" },
      countsCard("Orders", "orders", o.orders),
      countsCard("Updates", "updates", o.updates),
      countsCard("Events to Orange", "events", o.events),
      countsCard("Commands to the application", "provisioning", o.commands),
    ),
    section(
      "Oldest pending event",
      pending
        ? fields([
            ["event", idLink(pending.id)],
            ["type", pending.type],
            ["waiting for", age(pending.ageSeconds)],
            ["fleet / order", [idLink(pending.fleetId), " ", idLink(pending.orderId ?? pending.updateId)]],
            ["attempts", String(pending.attempts)],
            ["next attempt", when(pending.nextAttemptAt)],
            ["last answer", [pending.lastStatus ?? "", " ", pending.lastError ?? ""]],
          ])
        : h("p", { class: "empty" }, "No event waits for delivery (held ones are listed with their fleet below)."),
    ),
    h(
      "section",
      { id: "parked" },
      h("h2", null, `Parked events (${o.parkedEvents.total})`),
      o.parkedEvents.total > 0
        ? h("p", null, h("button", { type: "button", onclick: () => act("Re-send every parked event", async () => {
            const { data } = await api("POST", "/events/resend", {});
            return `${data.resent} event(s) re-sent${data.remaining > 0 ? `, ${data.remaining} still parked: press again` : ""}`;
          }) }, "Re-send all"), " ", o.parkedEvents.total > (o.parkedEvents.items ?? []).length ? link(["events"], "all parked events", { state: "dead", sort: "-deadAt" }) : "")
        : null,
      table(o.parkedEvents.items, [
        ...eventColumns.filter(([t]) => t !== "state" && t !== "created"),
        ["parked", (e) => when(e.deadAt)],
        ["", eventActions],
      ], "No parked event."),
    ),
    h(
      "section",
      { id: "held" },
      h("h2", null, `Held fleets (${o.heldFleets.total})`),
      table(o.heldFleets.items, [
        ["fleet (ordering key)", (k) => idLink(k.orderingKey)],
        ["held since", (k) => when(k.since)],
        ["waiting behind", (k) => `${k.waiting} event(s)`],
        ["held by", (k) => idLink(k.event.id)],
        ["", (k) => eventActions(k.event)],
      ], "No fleet is held."),
    ),
    section(
      "Last calls from Orange",
      table(o.lastCalls, [
        ["received", (c) => when(c.receivedAt)],
        ["", (c) => idLink(c.id)],
        ["Orange reference", (c) => c.orangeRef ?? ""],
        ["", (c) => c.useCase ?? c.kind],
        ["state", (c) => badge(c.state)],
        ["answer", (c) => c.answerMode ?? ""],
        ["reason", (c) => c.failureReason ?? ""],
      ], "No order or update received yet."),
    ),
  ];
}

async function search(query) {
  const q = query.q ?? "";
  if (!q) return [h("h1", null, "Search"), h("p", null, "Type an id (po_, upd_, cu_, fl_, us_, eu_, ev_, pc_…) or an Orange reference in the box above.")];
  const { data, total } = await get("/search", { q, offset: query.offset ?? 0, limit: PAGE });
  const target = (r) => {
    const m = /^\/admin\/v1\/([a-z]+)\/([^/]+)$/.exec(r.href);
    return m ? link([m[1], decodeURIComponent(m[2])], r.id) : r.id;
  };
  return [
    h("h1", null, "Search: ", h("q", null, q)),
    table(data, [["kind", (r) => r.kind], ["", target], ["what", (r) => r.label]], "Nothing has this id or Orange reference."),
    pager(["search"], query, total, data.length),
  ];
}

function timelineTable(entries) {
  return table(entries, [
    ["at", (e) => when(e.at)],
    ["what", (e) => h("span", { class: "kind" }, e.kind)],
    ["", (e) => e.summary],
    ["by", (e) => e.actor ?? ""],
    ["", (e) => [idLink(e.eventId), " ", idLink(e.commandId), " ", e.licenceId ? idLink(e.licenceId) : ""]],
  ], "Nothing recorded.");
}

function timelineSection(route, id, entries, total, title = "Timeline") {
  return h(
    "section",
    { id: "timeline" },
    h("h2", null, `${title} (${total})`),
    total > (entries ?? []).length ? h("p", null, `The latest ${(entries ?? []).length}: `, link([route, id, "timeline"], "every entry")) : null,
    timelineTable(entries),
  );
}

async function timelinePage(route, id, query) {
  const { data, total } = await get(`/${route}/${encodeURIComponent(id)}/timeline`, { offset: query.offset ?? 0, limit: 100, sort: query.sort ?? "at" });
  return [h("h1", null, "Timeline of ", idLink(id)), timelineTable(data), pager([route, id, "timeline"], { ...query, limit: 100 }, total, data.length)];
}

async function requestDetail(kind, id) {
  const { data: r } = await get(`/${kind}s/${encodeURIComponent(id)}`);
  return [
    h("div", { class: "title" }, h("h1", null, `${kind === "order" ? "Order" : "Update"} ${r.id}`), badge(r.state)),
    fields([
      ["Orange reference", r.orangeRef],
      ["Idempotency-Key", r.idempotencyKey],
      ["use case", r.useCase],
      ["answer mode", r.answerMode],
      ["failure reason", r.failureReason],
      ["last technical error", r.lastError],
      ["failed runs", r.attempts ? String(r.attempts) : undefined],
      ["customer", idLink(r.customerId)],
      ["fleet", idLink(r.fleetId)],
      ["quantity", r.quantity === undefined ? undefined : String(r.quantity)],
      ["licences named", r.licenceIds ? r.licenceIds.map((l) => [idLink(l), " "]) : undefined],
      ["received", when(r.createdAt)],
      ["completed", when(r.completedAt)],
      ["command", r.command ? [idLink(r.command.id), " ", badge(r.command.state)] : undefined],
      ["licences", kind === "order" && r.state === "completed" ? link(["licences"], "licences of this order", { orderId: r.id }) : undefined],
    ]),
    section("Events to Orange", table(r.events, [
      ["event", (e) => idLink(e.id)], ["type", (e) => e.type], ["state", (e) => badge(e.state)], ["attempts", (e) => e.attempts],
      ["last answer", (e) => [e.lastStatus ?? "", " ", e.lastError ?? ""]], ["written", (e) => when(e.createdAt)], ["delivered", (e) => when(e.deliveredAt)],
    ], "No event (the answer told Orange).")),
    timelineSection(`${kind}s`, r.id, r.timeline, r.timelineTotal),
    h("details", null, h("summary", null, "Request as received"), json(r.request)),
    r.answer !== undefined ? h("details", null, h("summary", null, "Answer sent"), json(r.answer)) : null,
  ];
}

async function customerDetail(id) {
  const { data: c } = await get(`/customers/${encodeURIComponent(id)}`);
  return [
    h("h1", null, `Customer ${c.tradingName ?? c.name ?? c.orangeRef}`),
    fields([
      ["id", c.id], ["Orange reference", c.orangeRef], ["trading name", c.tradingName], ["name", c.name],
      ["organization code", c.organizationCode], ["created", when(c.createdAt)], ["updated", when(c.updatedAt)],
    ]),
    section("Fleets", table(c.fleetList, [["fleet", (f) => idLink(f.id)], ["offer", (f) => f.offerCode], ["licences", (f) => f.licences], ["created", (f) => when(f.createdAt)]], "No fleet.")),
    section("Contacts", table(c.contacts, [["", (p) => person(p)], ["role", (p) => p.role ?? ""], ["Orange reference", (p) => p.orangeRef ?? ""]], "No contact.")),
    link(["orders"], "Orders of this customer", { customerId: c.id }),
    timelineSection("customers", c.id, c.timeline, c.timelineTotal),
  ];
}

async function fleetDetail(id, query) {
  const [{ data: f }, licences] = await Promise.all([
    get(`/fleets/${encodeURIComponent(id)}`),
    get("/licences", { fleetId: id, offset: query.offset ?? 0, limit: PAGE }),
  ]);
  return [
    h("h1", null, `Fleet ${f.id}`),
    fields([
      ["customer", [idLink(f.customerId), " ", f.customerTradingName ?? "", ` (${f.customerOrangeRef})`]],
      ["offer", f.offerCode], ["licences", String(f.licences)],
      ["by state", f.licencesByState ? Object.entries(f.licencesByState).map(([s, n]) => `${s} ${n}`).join(", ") : undefined],
      ["created", when(f.createdAt)], ["updated", when(f.updatedAt)],
    ]),
    section("Licences", licenceTable(licences.data), pager(["fleets", id], query, licences.total, licences.data.length)),
    link(["events"], "Events of this fleet", { fleetId: f.id }),
    timelineSection("fleets", f.id, f.timeline, f.timelineTotal),
  ];
}

function licenceTable(rows) {
  return table(rows, [
    ["licence", (l) => idLink(l.id)], ["state", (l) => badge(l.state)], ["Orange asked", (l) => l.externalState ?? ""],
    ["offer", (l) => l.offerCode], ["end user", (l) => person(l.endUser) ?? ""], ["login", (l) => l.login?.value ?? ""],
  ], "No licence.");
}

async function licenceDetail(id) {
  const { data: l } = await get(`/licences/${encodeURIComponent(id)}`);
  return [
    h("div", { class: "title" }, h("h1", null, `Licence ${l.id}`), badge(l.state)),
    fields([
      ["Orange asked", l.externalState], ["offer", l.offerCode], ["fleet", idLink(l.fleetId)], ["customer", idLink(l.customerId)],
      ["order", idLink(l.orderId)], ["end user", person(l.endUser)], ["login", l.login ? `${l.login.key ?? "login"}: ${l.login.value}` : undefined],
      ["technical resource", l.realizingResource ? json(l.realizingResource) : undefined],
      ["characteristics", l.serviceCharacteristic ? json(l.serviceCharacteristic) : undefined],
      ["created", when(l.createdAt)], ["updated", when(l.updatedAt)], ["terminated", when(l.terminatedAt)],
    ]),
    l.state === "terminated" ? h("p", { class: "muted" }, "A terminated licence cannot be changed.") : changeForm(l),
    timelineSection("licences", l.id, l.history, l.historyTotal, "History"),
    link(["updates"], "Orange's updates of this licence", { licenceId: l.id }),
  ];
}

/** UC5: one change on the partner's initiative; Orange hears of it by an updateNotification event. */
function changeForm(licence) {
  const ACTIONS = {
    endUserOperation: ["add", "modify", "swap", "delete"],
    rightOperation: ["add", "modify", "reset"],
    serviceCharacteristicOperation: ["add", "modify", "delete"],
    realizingResourceOperation: ["add", "modify", "swap", "delete"],
  };
  const LABELS = { endUserOperation: "End user", rightOperation: "Login", serviceCharacteristicOperation: "Service characteristic", realizingResourceOperation: "Technical resource" };
  const kind = h("select", { name: "operation" }, Object.keys(ACTIONS).map((k) => h("option", { value: k }, LABELS[k])));
  const action = h("select", { name: "action" });
  const input = (name, label, props = {}) => h("label", null, label, h("input", { name, ...props }));
  const groups = {
    endUserOperation: h("div", null, input("givenName", "Given name"), input("familyName", "Family name"), input("email", "E-mail", { type: "email" })),
    rightOperation: h("div", null, input("login", "Login"), input("loginEmail", "E-mail (required)", { type: "email" })),
    serviceCharacteristicOperation: h("div", null, input("charName", "Name"), input("charValue", "Value")),
    realizingResourceOperation: h("div", null, h("label", null, "Resource (JSON)", h("textarea", { name: "resource", rows: 4, cols: 50, placeholder: '{"type": "…", "characteristic": [{"name": "…", "value": "…"}]}' }))),
  };
  const status = h("p", { role: "status", class: "muted" });
  const sync = () => {
    action.replaceChildren(...ACTIONS[kind.value].map((a) => h("option", { value: a }, a)));
    for (const [k, g] of Object.entries(groups)) g.hidden = k !== kind.value;
  };
  kind.addEventListener("change", sync);
  sync();
  const form = h(
    "form",
    {
      class: "change",
      id: "change",
      onsubmit: (e) => {
        e.preventDefault();
        const v = Object.fromEntries(new FormData(form));
        const some = (o) => Object.fromEntries(Object.entries(o).filter(([, x]) => typeof x === "string" && x.trim() !== "").map(([k, x]) => [k, x.trim()]));
        let op;
        try {
          if (kind.value === "endUserOperation") {
            const endUser = some({ givenName: v.givenName, familyName: v.familyName, email: v.email });
            op = { action: v.action, ...(v.action === "delete" ? {} : { endUser }) };
          } else if (kind.value === "rightOperation") {
            op = { action: v.action, email: String(v.loginEmail ?? "").trim(), ...(v.login ? { loginKeyValue: { key: "login", value: String(v.login).trim() } } : {}) };
          } else if (kind.value === "serviceCharacteristicOperation") {
            op = { action: v.action, characteristic: some({ name: v.charName, value: v.charValue }) };
          } else {
            op = { action: v.action, ...(v.action === "delete" ? {} : { realizingResource: JSON.parse(String(v.resource || "{}")) }) };
          }
        } catch (err) {
          status.textContent = `The resource is not JSON: ${err.message}`;
          return;
        }
        act(`Change ${licence.id}`, async () => {
          const { data } = await api("POST", "/licence-changes", { userService: [{ id: licence.id, [kind.value]: op }] });
          return `Licence ${licence.id} changed; Orange is told by event ${data.events.map((x) => x.id).join(", ")}`;
        });
      },
    },
    h("h2", null, "Change this licence (UC5)"),
    h("p", { class: "muted" }, "Applied at once, in one transaction with the updateNotification event that tells Orange. A password is never stored nor sent."),
    h("div", { class: "row" }, h("label", null, "Operation", kind), h("label", null, "Action", action)),
    Object.values(groups),
    h("button", { type: "submit" }, "Apply the change"),
    status,
  );
  return form;
}

async function eventDetail(id) {
  const { data: e } = await get(`/events/${encodeURIComponent(id)}`);
  return [
    h("div", { class: "title" }, h("h1", null, `Event ${e.id}`), badge(e.state), eventActions(e)),
    fields([
      ["type", e.type], ["API", e.api], ["fleet", idLink(e.fleetId)], ["order", idLink(e.orderId)], ["update", idLink(e.updateId)],
      ["ordering key", e.orderingKey], ["held by", e.heldBy ? idLink(e.heldBy) : undefined],
      ["attempts (since written or re-sent)", String(e.attempts)], ["next attempt", e.state === "pending" ? when(e.nextAttemptAt) : undefined],
      ["last status", e.lastStatus === undefined ? undefined : String(e.lastStatus)], ["last error", e.lastError],
      ["Orange's request id", e.lastRequestId], ["Orange's answer", e.lastResponseBody],
      ["written", when(e.createdAt)], ["delivered", when(e.deliveredAt)], ["parked", when(e.deadAt)], ["re-sent", when(e.resentAt)],
      ["discarded", e.discardedAt ? [when(e.discardedAt), ` by ${e.discardedBy ?? "?"}`, e.discardReason ? `: ${e.discardReason}` : ""] : undefined],
    ]),
    section("Delivery attempts", table(e.deliveryAttempts, [
      ["#", (a) => a.attempt], ["started", (a) => when(a.startedAt)], ["outcome", (a) => (a.outcome ? badge(a.outcome) : "interrupted")],
      ["status", (a) => a.status ?? ""], ["error", (a) => a.error ?? ""], ["Orange's request id", (a) => a.requestId ?? ""], ["answer", (a) => a.responseBody ?? ""],
    ], "Not attempted yet.")),
    h("details", { open: true }, h("summary", null, "Envelope as sent"), json(e.body)),
  ];
}

async function commandDetail(id) {
  const { data: c } = await get(`/provisioning/${encodeURIComponent(id)}`);
  const open = ["waiting", "sending", "retrying"].includes(c.state);
  const reason = h("input", { name: "reason", placeholder: "reason (failed)", size: 30 });
  const outcome = h("select", { name: "outcome" }, h("option", { value: "completed" }, "completed"), h("option", { value: "failed" }, "failed"));
  return [
    h("div", { class: "title" }, h("h1", null, `Command ${c.id}`), badge(c.state)),
    fields([
      ["type", c.type], ["for", idLink(c.requestId)], ["lanes", c.lanes.join(", ")], ["attempts", String(c.attempts)],
      ["next attempt", when(c.nextAttemptAt)], ["last status", c.lastStatus === undefined ? undefined : String(c.lastStatus)],
      ["last error", c.lastError], ["ended by", c.endedBy], ["created", when(c.createdAt)], ["prepared", when(c.preparedAt)], ["finished", when(c.finishedAt)],
    ]),
    c.state === "parked"
      ? h("p", null, h("button", { type: "button", onclick: () => act(`Retry ${c.id}`, async () => {
          await api("POST", `/provisioning/${encodeURIComponent(c.id)}/retry`);
          return `Command ${c.id} sent again`;
        }) }, "Send again"))
      : null,
    open
      ? h("form", { class: "inline", onsubmit: (e) => {
          e.preventDefault();
          act(`Result of ${c.id}`, async () => {
            const body = outcome.value === "failed" ? { outcome: "failed", reason: reason.value.trim() } : { outcome: "completed" };
            await api("POST", `/provisioning/${encodeURIComponent(c.id)}/result`, body);
            return `Command ${c.id} ended ${outcome.value} by hand`;
          });
        } }, h("strong", null, "End by hand: "), outcome, reason, h("button", { type: "submit" }, "Record the result"))
      : null,
    section("Attempts", table(c.attemptList, [
      ["#", (a) => a.attempt], ["started", (a) => when(a.startedAt)], ["outcome", (a) => a.outcome ?? ""], ["status", (a) => a.status ?? ""],
      ["ms", (a) => a.durationMs ?? ""], ["error", (a) => a.error ?? ""], ["answer", (a) => a.responseBody ?? ""],
    ], "Not sent yet.")),
    c.body !== undefined ? h("details", null, h("summary", null, "Body sent"), json(c.body)) : null,
    c.result !== undefined ? h("details", null, h("summary", null, "Result reported"), json(c.result)) : null,
  ];
}

/** The listings: their filters (as the admin API names them) and columns. */
const LISTINGS = {
  orders: {
    title: "Orders",
    filters: [["state", "state", ["", ...STATES.orders]], ["useCase", "use case", ["", "UC1", "UC2", "UC3"]], ["orangeRef", "Orange reference"], ["customerId", "customer"], ["fleetId", "fleet"], ["from", "from (ISO)"], ["to", "to (ISO)"]],
    columns: [["order", (r) => idLink(r.id)], ["Orange reference", (r) => r.orangeRef ?? ""], ["use case", (r) => r.useCase], ["state", (r) => badge(r.state)], ["reason", (r) => r.failureReason ?? r.lastError ?? ""], ["fleet", (r) => idLink(r.fleetId)], ["received", (r) => when(r.createdAt)]],
  },
  updates: {
    title: "Updates",
    filters: [["state", "state", ["", ...STATES.updates]], ["orangeRef", "Orange reference"], ["licenceId", "licence"], ["from", "from (ISO)"], ["to", "to (ISO)"]],
    columns: [["update", (r) => idLink(r.id)], ["Orange reference", (r) => r.orangeRef ?? ""], ["licences", (r) => r.licences], ["state", (r) => badge(r.state)], ["reason", (r) => r.failureReason ?? r.lastError ?? ""], ["received", (r) => when(r.createdAt)]],
  },
  customers: {
    title: "Customers",
    filters: [["name", "name contains"], ["orangeRef", "Orange reference"], ["organizationCode", "organization code"]],
    columns: [["customer", (r) => idLink(r.id)], ["name", (r) => r.tradingName ?? r.name ?? ""], ["Orange reference", (r) => r.orangeRef], ["organization code", (r) => r.organizationCode ?? ""], ["fleets", (r) => r.fleets], ["created", (r) => when(r.createdAt)]],
  },
  fleets: {
    title: "Fleets",
    filters: [["customerId", "customer"], ["offerCode", "offer"]],
    columns: [["fleet", (r) => idLink(r.id)], ["customer", (r) => [idLink(r.customerId), " ", r.customerTradingName ?? ""]], ["offer", (r) => r.offerCode], ["licences", (r) => r.licences], ["created", (r) => when(r.createdAt)]],
  },
  licences: {
    title: "Licences",
    filters: [["state", "state", ["", "active", "inactive", "terminated"]], ["offerCode", "offer"], ["fleetId", "fleet"], ["customerId", "customer"], ["orderId", "order"], ["endUserEmail", "end user e-mail"]],
    table: licenceTable,
  },
  events: {
    title: "Events to Orange",
    filters: [["state", "state", ["", ...STATES.events]], ["type", "type"], ["fleetId", "fleet"], ["orderId", "order"], ["sort", "sort", ["-createdAt", "createdAt", "-deadAt", "-nextAttemptAt", "-attempts"]]],
    columns: [...eventColumns, ["", eventActions]],
  },
  provisioning: {
    title: "Commands to the partner's application",
    filters: [["state", "state", ["", ...STATES.provisioning]], ["type", "type"], ["requestId", "order / update"], ["fleetId", "fleet"]],
    columns: [["command", (c) => idLink(c.id)], ["type", (c) => c.type ?? "(not prepared)"], ["for", (c) => idLink(c.requestId)], ["state", (c) => badge(c.state)], ["attempts", (c) => c.attempts], ["last error", (c) => [c.lastStatus ?? "", " ", c.lastError ?? ""]], ["created", (c) => when(c.createdAt)]],
  },
};

async function listing(route, query) {
  const spec = LISTINGS[route];
  const params = { ...query, offset: query.offset ?? 0, limit: PAGE };
  const { data, total } = await get(`/${route}`, params);
  return [
    h("h1", null, spec.title),
    filterForm([route], query, spec.filters),
    spec.table ? spec.table(data) : table(data, spec.columns, "Nothing matches."),
    pager([route], query, total, data.length),
  ];
}

// ---------------------------------------------------------------------------------------------
// Routing

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs = ""] = raw.split("?");
  const segments = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { segments, query: Object.fromEntries(new URLSearchParams(qs)) };
}

function view(segments, query) {
  const [route, id, sub] = segments;
  if (!route || route === "overview") return overview();
  if (route === "search") return search(query);
  if (!(route in LISTINGS)) return Promise.resolve([h("h1", null, "Not found"), h("p", null, "No such view. "), link([], "Overview")]);
  if (id === undefined) return listing(route, query);
  if (sub === "timeline" && ["orders", "updates", "customers", "fleets", "licences"].includes(route)) return timelinePage(route, id, query);
  switch (route) {
    case "orders":
      return requestDetail("order", id);
    case "updates":
      return requestDetail("update", id);
    case "customers":
      return customerDetail(id);
    case "fleets":
      return fleetDetail(id, query);
    case "licences":
      return licenceDetail(id);
    case "events":
      return eventDetail(id);
    default:
      return commandDetail(id);
  }
}

let generation = 0;

async function render() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  topBar.hidden = false;
  const mine = ++generation;
  const { segments, query } = parseHash();
  for (const a of topBar.querySelectorAll("nav a")) a.classList.toggle("current", a.getAttribute("href") === `#/${segments[0] ?? ""}`);
  main.setAttribute("aria-busy", "true");
  let nodes;
  try {
    nodes = await view(segments, query);
  } catch (err) {
    if (err instanceof LoggedOut) return;
    nodes = [errorBox(err)];
  }
  if (mine !== generation) return;
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== ""));
  main.removeAttribute("aria-busy");
}

document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = new FormData(e.target).get("q")?.toString().trim();
  if (q) location.hash = href(["search"], { q });
});
document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/";
  showLogin("Logged out.");
});
window.addEventListener("hashchange", () => render());
render();
