// runcache dashboard: draws each view from the JSON API. Every text that comes from the store
// reaches the screen through text nodes (el() below), never as markup.
"use strict";

let INFO = { writable: false, location: "" };
let openEvents = null;

/** Builds an element: el("a", {href: "#/"}, "text", child, ...). Strings become text nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "onclick" || k === "onsubmit" || k === "onchange") node[k] = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  let body;
  try { body = await r.json(); } catch (e) { body = { error: (await r.text?.()) || r.statusText }; }
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function size(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function ago(ms) {
  if (!ms) return "?";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function statusCell(status) {
  return el("td", { class: `status-${status}` }, status);
}

function keyLink(key) {
  return el("a", { href: `#/entry/${key}`, class: "mono", title: key }, key.slice(0, 12));
}

/** A JSON value as a readable, collapsible-free tree of lists. */
function tree(value) {
  if (value === null) return el("span", { class: "n" }, "null");
  if (Array.isArray(value)) {
    if (!value.length) return el("span", {}, "[]");
    return el("ul", {}, value.map((v, i) => el("li", {}, el("span", { class: "k" }, `${i}: `), tree(v))));
  }
  if (typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return el("span", {}, "{}");
    return el("ul", {}, keys.map((k) => el("li", {}, el("span", { class: "k" }, `${k}: `), tree(value[k]))));
  }
  if (typeof value === "string") return el("span", { class: "s" }, JSON.stringify(value));
  return el("span", { class: "n" }, String(value));
}

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : null }, h.label || h)))),
    el("tbody", {}, rows));
}

function show(...nodes) {
  const view = document.getElementById("view");
  view.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}

function activate(name) {
  for (const n of ["overview", "entries", "sweeps"]) {
    document.getElementById(`nav-${n}`).classList.toggle("active", n === name);
  }
}

// ---- Overview ------------------------------------------------------------------------------

async function overview() {
  activate("overview");
  const o = await api("/api/overview");
  const max = Math.max(1, ...o.namespaces.map((n) => n.bytes));
  const card = (label, value, id) => el("div", { class: "card", id }, el("div", { class: "num" }, value), el("div", { class: "muted" }, label));
  const bars = o.namespaces.map((n) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${Math.round((n.bytes / max) * 400)}px`;
    return el("div", { class: "bar namespace" },
      el("a", { class: "label", href: `#/entries?namespace=${encodeURIComponent(n.name)}`, title: n.name }, n.name),
      fill,
      el("span", { class: "muted" }, `${n.entries} entries, ${size(n.bytes)}, used ${ago(n.last_used_unix_ms)}`,
        n.failed ? `, ${n.failed} failed` : "", n.interrupted ? `, ${n.interrupted} interrupted` : ""));
  });
  const failures = o.recent_failures.map((e) => el("tr", {},
    el("td", {}, keyLink(e.key)), el("td", {}, e.namespace || ""), statusCell(e.status),
    el("td", {}, ago(e.created_unix_ms)), el("td", { class: "error" }, e.error || e.damage || "")));
  show(
    el("h1", {}, "Overview"),
    el("p", { class: "muted" }, "Store ", el("code", {}, o.location), `, format ${o.format}`),
    el("div", { class: "cards" },
      card("entries", o.entries, "card-entries"),
      card("namespaces", o.namespaces.length, "card-namespaces"),
      card("leases alive", o.leases.alive, "card-leases-alive"),
      card("leases dead", o.leases.dead, "card-leases-dead"),
      card("sweeps", o.sweeps, "card-sweeps"),
      o.damaged ? card("damaged", o.damaged, "card-damaged") : null),
    el("h2", {}, "Namespaces (size)"),
    bars.length ? el("div", { id: "namespaces" }, bars) : el("p", { class: "muted" }, "No entries yet."),
    el("h2", {}, "Recent failures"),
    failures.length
      ? table(["key", "namespace", "status", "created", "error"], failures, { id: "failures" })
      : el("p", { class: "muted" }, "None."));
}

// ---- Entries -------------------------------------------------------------------------------

async function entries(params) {
  activate("entries");
  const form = el("form", { class: "filters", id: "filters" });
  const field = (label, name, input) => { input.name = name; input.value = params.get(name) || ""; return el("label", {}, label, input); };
  const status = el("select", {}, ["", "completed", "failed", "interrupted", "damaged"].map((s) => el("option", { value: s }, s || "any")));
  form.append(
    field("namespace", "namespace", el("input", { size: 24 })),
    field("status", "status", status),
    field("min size (bytes)", "min_size", el("input", { size: 8 })),
    field("max size (bytes)", "max_size", el("input", { size: 8 })),
    field("older than (s)", "older_than_s", el("input", { size: 6 })),
    field("newer than (s)", "newer_than_s", el("input", { size: 6 })),
    el("button", { type: "submit" }, "Filter"));
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    location.hash = `#/entries?${q}`;
  };
  const query = new URLSearchParams(params);
  const page = await api(`/api/entries?${query}`);
  const rows = page.entries.map((e) => el("tr", { class: "entry" },
    el("td", {}, keyLink(e.key)), el("td", {}, e.namespace || ""), statusCell(e.status),
    el("td", { class: "num" }, e.size === undefined ? "?" : size(e.size)),
    el("td", {}, ago(e.created_unix_ms)), el("td", {}, ago(e.last_used_unix_ms)),
    el("td", { class: "error" }, e.error || e.damage || "")));
  let more = null;
  if (page.next) {
    const next = new URLSearchParams(params); next.set("after", page.next);
    more = el("a", { id: "next-page", href: `#/entries?${next}` }, "Next page →");
  }
  show(
    el("h1", {}, "Entries"), form,
    rows.length
      ? table(["key", "namespace", "status", { label: "size", num: true }, "created", "last used", "error"], rows, { id: "entries" })
      : el("p", { class: "muted", id: "no-entries" }, "No entry matches in this page."),
    el("p", { class: "muted" }, `${page.scanned} entries examined. `, more));
}

// ---- One entry -----------------------------------------------------------------------------

async function entry(key) {
  activate("entries");
  const e = await api(`/api/entries/${encodeURIComponent(key)}`);
  const m = e.manifest;
  const field = (k, v) => el("tr", {}, el("th", {}, k), el("td", {}, v));
  const parts = [
    el("h1", {}, "Entry ", el("code", { id: "entry-key" }, e.key)),
    el("table", { id: "entry-fields" }, el("tbody", {}, [
      field("namespace", el("a", { href: `#/entries?namespace=${encodeURIComponent(m.namespace)}`, id: "entry-namespace" }, m.namespace)),
      field("version", m.version),
      field("status", el("span", { class: `status-${m.status}`, id: "entry-status" }, m.status)),
      field("created", `${new Date(m.created_unix_ms).toISOString()} (${ago(m.created_unix_ms)})`),
      field("duration", `${(m.duration_s || 0).toFixed(3)} s`),
      field("computed by", `${m.host} pid ${m.pid}`),
      field("size", size(e.size)),
      field("encoding", m.encoding || "—"),
      field("sweep", m.sweep ? el("a", { href: `#/sweep/${encodeURIComponent(m.sweep)}` }, m.sweep) : "—"),
      field("signed", m.signature ? "yes" : "no"),
    ])),
  ];
  if (m.error) {
    parts.push(el("h2", {}, "Failure"),
      el("p", { class: "error", id: "failure" }, `${m.error.type || m.error.error_type}: ${m.error.message}`),
      m.error.traceback ? el("pre", { id: "traceback" }, m.error.traceback) : null);
  }
  parts.push(el("h2", {}, "Key document"), el("div", { class: "tree mono", id: "key-doc" }, tree(m.key_doc)));
  if (m.metadata && Object.keys(m.metadata).length) {
    parts.push(el("h2", {}, "Metadata"), el("div", { class: "tree mono", id: "metadata" }, tree(m.metadata)));
  }
  parts.push(el("h2", {}, "Blobs"), m.blobs.length
    ? table(["role", { label: "size", num: true }, "digest"], m.blobs.map((b) =>
      el("tr", {}, el("td", {}, b.role), el("td", { class: "num" }, size(b.size)), el("td", { class: "mono" }, b.digest.slice(0, 16)))))
    : el("p", { class: "muted" }, "None (the value is in the artifacts, or the entry failed)."));
  if (e.artifacts.length) {
    const base = `/api/entries/${e.key}/artifacts/`;
    const shown = [];
    const rows = e.artifacts.map((a) => {
      const href = base + a.name.split("/").map(encodeURIComponent).join("/");
      if (a.kind === "image") shown.push(el("div", {}, el("p", { class: "muted" }, a.name), el("img", { class: "artifact", src: `${href}?inline=1`, alt: a.name })));
      if (a.kind === "text" && a.size <= 65536) {
        const pre = el("pre", { class: "artifact-text", "data-name": a.name }, "…");
        fetch(`${href}?inline=1`, { credentials: "same-origin" }).then((r) => r.text()).then((t) => { pre.textContent = t; });
        shown.push(el("div", {}, el("p", { class: "muted" }, a.name), pre));
      }
      return el("tr", {}, el("td", {}, a.name), el("td", { class: "num" }, size(a.size)),
        el("td", {}, el("a", { href, download: a.name.split("/").pop() }, "download")));
    });
    parts.push(el("h2", {}, "Artifacts"), table(["name", { label: "size", num: true }, ""], rows, { id: "artifacts" }), ...shown);
  }
  if (e.log !== null && e.log !== undefined) {
    parts.push(el("h2", {}, "Captured output"), el("pre", { id: "log" }, e.log));
  }
  parts.push(el("h2", {}, "Explain: nearest entries of this task"));
  if (e.nearest.length) {
    parts.push(el("div", { id: "explain" }, e.nearest.map((n) => el("div", { class: "nearest" },
      el("p", {}, keyLink(n.key), ` (${n.status}) differs in `, n.differences.length ? n.differences.map((d) => d.path).join(", ") : "nothing visible in the key document"),
      n.differences.length ? table(["argument", "that entry", "this entry"], n.differences.map((d) =>
        el("tr", {}, el("td", { class: "mono" }, d.path), el("td", { class: "mono" }, JSON.stringify(d.stored)), el("td", { class: "mono" }, JSON.stringify(d.now))))) : null))));
  } else {
    parts.push(el("p", { class: "muted", id: "explain" }, "No other entry of this task is stored."));
  }
  if (m.dependencies && m.dependencies.length) {
    parts.push(el("h2", {}, "Dependencies"), el("ul", {}, m.dependencies.map((d) =>
      el("li", {}, keyLink(d.key), ` ${d.namespace} v${d.version}`))));
  }
  if (INFO.writable) {
    parts.push(el("p", {}, el("button", {
      class: "danger", id: "delete-entry",
      onclick: async () => {
        if (!confirm(`Delete entry ${e.key.slice(0, 12)} of ${m.namespace}? The next call recomputes it.`)) return;
        await api(`/api/entries/${e.key}`, { method: "DELETE", headers: { "X-Runcache-Write": "yes" } });
        location.hash = `#/entries?namespace=${encodeURIComponent(m.namespace)}`;
      },
    }, "Delete this entry")));
  }
  show(...parts);
}

// ---- Sweeps --------------------------------------------------------------------------------

function countsLine(c) {
  if (!c) return el("span", { class: "muted" }, "?");
  const part = (name, value) => el("span", { class: `count-${name}` }, el("b", { id: `count-${name}` }, value), ` ${name}`);
  return el("div", { class: "counts", id: "counts" },
    part("completed", c.completed), part("cached", c.cached), part("running", c.running),
    part("failed", c.failed), part("queued", c.queued), c.cancelled ? part("cancelled", c.cancelled) : null,
    el("span", { class: "muted", id: "eta" }, c.drained ? "done" : c.eta_s ? `ETA ${Math.round(c.eta_s)} s` : "ETA unknown"));
}

async function sweeps() {
  activate("sweeps");
  const s = await api("/api/sweeps");
  const rows = s.sweeps.map((w) => el("tr", { class: "sweep" },
    el("td", {}, el("a", { href: `#/sweep/${encodeURIComponent(w.id)}`, class: "mono" }, w.id)),
    el("td", {}, w.namespace), el("td", {}, ago(w.created_unix_ms)),
    el("td", { class: "num" }, w.counts ? `${w.counts.settled}/${w.counts.total}` : "?"),
    el("td", {}, w.counts ? countsLine(w.counts) : el("span", { class: "error" }, w.error))));
  show(el("h1", {}, "Sweeps"), rows.length
    ? table(["sweep", "task", "submitted", { label: "done", num: true }, "counts"], rows, { id: "sweeps" })
    : el("p", { class: "muted" }, "No sweeps in this store."));
}

async function sweep(id) {
  activate("sweeps");
  const draw = async () => {
    const s = await api(`/api/sweeps/${encodeURIComponent(id)}`);
    const jobs = s.executor && (s.executor.job_ids || s.executor.jobs || s.executor.job_id);
    const items = s.items.map((it) => el("tr", { class: "item" },
      el("td", { class: "num" }, it.index), el("td", {}, keyLink(it.key)),
      el("td", { class: `state-${it.state}` }, it.state), el("td", {}, it.host || ""),
      el("td", { class: "mono" }, it.log || ""), el("td", { class: "error" }, it.error || "")));
    const parts = [
      el("h1", {}, "Sweep ", el("code", {}, s.id)),
      el("p", {}, `Task ${s.namespace} v${s.version}, mode ${s.mode}, ${s.count} items, submitted ${ago(s.created_unix_ms)}.`),
      countsLine(s.counts),
      jobs ? el("p", { id: "jobs" }, "SLURM jobs: ", el("code", {}, Array.isArray(jobs) ? jobs.join(", ") : String(jobs))) : null,
      s.executor && Object.keys(s.executor).length ? el("details", {}, el("summary", {}, "Executor record"), el("div", { class: "tree mono" }, tree(s.executor))) : null,
      INFO.writable && !s.counts.drained ? el("p", {}, el("button", {
        class: "danger", id: "cancel-sweep",
        onclick: async () => {
          if (!confirm(`Cancel sweep ${s.id}? Items not yet started will not run.`)) return;
          await api(`/api/sweeps/${encodeURIComponent(s.id)}/cancel`, { method: "POST", headers: { "X-Runcache-Write": "yes" } });
          draw();
        },
      }, "Cancel the rest of this sweep")) : null,
      el("h2", {}, "Items"),
      table([{ label: "#", num: true }, "key", "state", "host", "log", "error"], items, { id: "items" }),
    ];
    show(...parts);
  };
  await draw();
  // Live counts: the server reads the store once a second and sends only changes.
  openEvents = new EventSource(`/api/sweeps/${encodeURIComponent(id)}/events`);
  // Each event means the counts changed: redraw the sweep (counts and items) from the API.
  openEvents.addEventListener("counts", (ev) => {
    if (!JSON.parse(ev.data).error) draw().catch(() => {});
  });
}

// ---- Routing -------------------------------------------------------------------------------

async function route() {
  if (openEvents) { openEvents.close(); openEvents = null; }
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (!parts.length) await overview();
    else if (parts[0] === "entries") await entries(params);
    else if (parts[0] === "entry" && parts[1]) await entry(parts[1]);
    else if (parts[0] === "sweeps") await sweeps();
    else if (parts[0] === "sweep" && parts[1]) await sweep(parts[1]);
    else show(el("p", { class: "error" }, `No page ${hash}`));
  } catch (err) {
    show(el("p", { class: "error", id: "error" }, `Could not load this page: ${err.message}`));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  try {
    INFO = await api("/api/info");
    document.getElementById("store-location").textContent = INFO.location;
    // The token, if the URL carried one, is now a cookie: keep it out of the address bar.
    if (location.search.includes("token=")) history.replaceState(null, "", `/${location.hash}`);
  } catch (err) {
    show(el("p", { class: "error" }, `Could not reach the store: ${err.message}`));
    return;
  }
  route();
});
