// saerec admin dashboard. Plain DOM, no framework, nothing fetched from elsewhere.
//
// Every API answer is rendered with textContent/createElement only (never innerHTML):
// titles and genres are user input, and the page's Content-Security-Policy forbids
// inline script anyway. The admin token lives in sessionStorage (this tab only) and is
// sent as the Bearer header on every call; a 401 anywhere signs the page out.
"use strict";

(() => {
  const TOKEN_KEY = "saerec.adminToken";
  // The page is served at <root>/admin/; the API is <root>/... (works behind a path prefix).
  const ROOT = new URL("../", window.location.href);
  const TERMINAL = new Set(["succeeded", "failed"]);
  const RATINGS_PAGE = 20;
  const ROUTES_SHOWN = 8;
  const POLL_MS = 1000;
  const STATS_EVERY_MS = 15000;
  const EXPERIMENTS_SHOWN = 5;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    signedIn: false,
    watchSeq: 0, // bumping it ends any job-watching loop
    watching: null,
    statsTimer: null,
    titles: new Map(), // movie id -> title (or null when the catalog has none)
    user: null,
    session: new Map(), // movie id -> stars: the ratings of "try a session", in order added
  };

  // -- DOM helpers ----------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    el.append(...children.flat().filter((c) => c !== null && c !== undefined));
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function message(id, text, kind) {
    const el = $(id);
    if (!text) {
      el.hidden = true;
      el.textContent = "";
      return;
    }
    el.textContent = text;
    el.className = "alert" + (kind ? " " + kind : "");
    el.hidden = false;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const number = (n) => (n === null || n === undefined ? "–" : new Intl.NumberFormat("en").format(n));
  // Sizes in binary units: "681.2 MiB"; "–" when unknown (versions registered before sizes).
  function bytes(n) {
    if (typeof n !== "number" || !Number.isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  }
  const fixed = (v, digits = 4) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–");
  const stars = (r) => "★" + Number(r).toString();
  const ms = (v) => (typeof v === "number" ? (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms" : "–");
  const percent = (p) => Math.round((Number(p) || 0) * 100) + " %";

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fromUnix(seconds) {
    return when(new Date(Number(seconds) * 1000).toISOString());
  }

  // -- the API ----------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail, statusText) {
      super(`${status} ${statusText || ""}: ${detailText(detail)}`.trim());
      this.status = status;
      this.detail = detail;
      this.statusText = statusText || "";
    }
  }

  function detailText(detail) {
    if (detail === null || detail === undefined) return "";
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((e) => {
          const loc = (e.loc || []).filter((p) => p !== "body").join(".");
          return (loc ? loc + ": " : "") + (e.msg || JSON.stringify(e));
        })
        .join("; ");
    }
    if (typeof detail === "object" && detail.message) {
      return detail.message + (detail.job_id ? ` (job ${detail.job_id})` : "");
    }
    return JSON.stringify(detail);
  }

  function describe(err) {
    if (err instanceof ApiError) {
      const text = detailText(err.detail);
      return `${err.status}${err.statusText ? " " + err.statusText : ""}${text ? ": " + text : ""}`;
    }
    return err && err.message ? err.message : String(err);
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, ROOT), init);
    } catch (err) {
      throw new ApiError(0, `the server cannot be reached (${err.message})`, "network error");
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!response.ok) {
      const detail = data && typeof data === "object" && "detail" in data ? data.detail : data;
      const err = new ApiError(response.status, detail, response.statusText);
      if (response.status === 401 && state.signedIn) {
        signOut("The server refused the admin token (401 Unauthorized). Sign in again.");
      }
      throw err;
    }
    return data;
  }

  // -- signing in and out -------------------------------------------------------------------
  function loginFailure(err) {
    if (err.status === 401) {
      return "Wrong token: the server refused it (401 Unauthorized). No data is shown.";
    }
    if (err.status === 503 && /admin is disabled/i.test(detailText(err.detail))) {
      return "Admin is disabled on this server (503): ADMIN_TOKEN is not set. Set it and restart the service.";
    }
    return `Sign-in failed: ${describe(err)}`;
  }

  async function signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    $("sign-in").disabled = true;
    let models;
    try {
      models = await api("admin/models");
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(loginFailure(err));
      return;
    } finally {
      $("sign-in").disabled = false;
    }
    state.signedIn = true;
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("session").hidden = false;
    message("login-error", "");
    renderModels(models);
    loadStats();
    loadJobs();
    loadExperiments();
    state.statsTimer = setInterval(() => {
      if (document.visibilityState === "visible") loadStats();
    }, STATS_EVERY_MS);
  }

  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(reason || "");
  }

  function showLogin(reason) {
    state.signedIn = false;
    state.watchSeq += 1;
    state.watching = null;
    clearInterval(state.statsTimer);
    state.statsTimer = null;
    state.session.clear();
    for (const id of ["stats", "stats-routes", "models", "experiments", "experiment-candidate", "jobs", "job-watch", "user-ratings", "user-recs", "session-ratings", "session-recs", "similar"]) {
      $(id).replaceChildren();
    }
    $("job-watch").hidden = true;
    for (const id of ["stats-message", "models-message", "experiments-message", "retrain-message", "user-message", "session-message", "similar-message"]) {
      message(id, "");
    }
    $("dashboard").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    $("token").value = "";
    message("login-error", reason, "error");
    $("token").focus();
  }

  // -- service figures ----------------------------------------------------------------------
  function tile(label, value, sub, id, valueClass) {
    return h("div", { class: "tile", id }, h("div", { class: "label", text: label }),
      h("div", { class: "value" + (valueClass ? " " + valueClass : ""), text: value }),
      sub ? h("div", { class: "sub", text: sub }) : null);
  }

  async function loadStats() {
    let stats;
    try {
      stats = await api("admin/stats");
    } catch (err) {
      if (state.signedIn) message("stats-message", `Service figures unavailable: ${describe(err)}`, "error");
      return;
    }
    message("stats-message", "");
    const approx = stats.counts_estimated ? "≈ " : "";
    const req = stats.requests;
    const jobs = stats.jobs || {};
    const jobLine = ["running", "queued", "succeeded", "failed"]
      .map((k) => `${number(jobs[k] || 0)} ${k}`)
      .join(" · ");
    const served = stats.served_version
      ? stats.served_version === stats.active_version
        ? "served by this process"
        : `this process serves ${stats.served_version}`
      : "this process serves the popular list";
    const tiles = [
      tile("Ratings", approx + number(stats.ratings), null, "stat-ratings"),
      tile("Users", approx + number(stats.users), null, "stat-users"),
      tile("Movies", number(stats.movies), null, "stat-movies"),
      tile("Active model", stats.active_version || "none", served, "stat-model", "version-id"),
      tile("Training jobs", number(Object.values(jobs).reduce((a, b) => a + b, 0)), jobLine, "stat-jobs"),
      tile("Requests", number(req.total), `4xx ${number(req.client_errors)} · 5xx ${number(req.errors)} (${req.scope})`, "stat-requests"),
      tile("Latency (mean)", ms(req.mean_ms), `p50 ${ms(req.p50_ms)} · p95 ${ms(req.p95_ms)} · p99 ${ms(req.p99_ms)}`, "stat-latency"),
    ];
    const rows = req.routes.slice(0, ROUTES_SHOWN).map((r) =>
      h("tr", null,
        h("td", { "data-label": "Route" }, h("span", { class: "mono", text: `${r.method} ${r.route}` })),
        h("td", { class: "num", "data-label": "Requests", text: number(r.requests) }),
        h("td", { class: "num", "data-label": "5xx", text: number(r.errors) }),
        h("td", { class: "num", "data-label": "Mean", text: ms(r.mean_ms) }),
        h("td", { class: "num", "data-label": "p95", text: ms(r.p95_ms) })));
    const table = rows.length
      ? h("div", { class: "table-wrap" },
        h("table", { class: "compact", id: "routes-table" },
          h("thead", null, h("tr", null, h("th", { text: "Busiest routes" }), h("th", { class: "num", text: "Requests" }),
            h("th", { class: "num", text: "5xx" }), h("th", { class: "num", text: "Mean" }), h("th", { class: "num", text: "p95" }))),
          h("tbody", null, rows)))
      : null;
    $("stats").replaceChildren(...tiles);
    $("stats-routes").replaceChildren(...(table ? [table] : []));
  }

  // -- model versions -------------------------------------------------------------------------
  async function loadModels() {
    try {
      renderModels(await api("admin/models"));
    } catch (err) {
      if (state.signedIn) message("models-message", `Model versions unavailable: ${describe(err)}`, "error");
    }
  }

  function renderModels(models) {
    const box = $("models");
    if (!models.length) {
      box.replaceChildren(h("p", { class: "muted", text: "No model version yet: start a retrain below. Recommendations come from the popular list meanwhile." }));
      return;
    }
    const active = models.find((m) => m.active);
    // What retention keeps costs this much in the database (and in each host's cache).
    const total = models.reduce((sum, m) => sum + (m.artifact_bytes || 0), 0);
    const summary = h("p", { id: "models-total", class: "muted small",
      text: `${models.length} version${models.length === 1 ? "" : "s"} kept · ${bytes(total)} of model artifacts stored` });
    box.replaceChildren(summary, ...models.map((m, i) => versionCard(m, active, m.active || i === 0)));
    for (const m of models) loadOnline(m.version);
    fillCandidates(models);
  }

  // A version's online figures (what its impressions led to), beside its offline ones.
  async function loadOnline(version) {
    const slot = document.querySelector(`.online[data-version="${CSS.escape(version)}"]`);
    if (!slot) return;
    try {
      const o = await api(`admin/models/${encodeURIComponent(version)}/online`);
      slot.replaceChildren(h("span", { class: "muted", text: "online " }),
        h("b", { text: onlineText(o) }));
    } catch (err) {
      slot.textContent = `online figures unavailable: ${describe(err)}`;
    }
  }

  function interval(ci) {
    return Array.isArray(ci) ? `${(ci[0] * 100).toFixed(1)}–${(ci[1] * 100).toFixed(1)} %` : "–";
  }

  function rate(p) {
    return typeof p === "number" ? `${(p * 100).toFixed(1)} %` : "–";
  }

  function onlineText(o) {
    if (!o.impressions) return "no impressions yet";
    const mean = o.mean_shown_rating === null ? "–" : stars(o.mean_shown_rating.toFixed(2));
    return `${number(o.impressions)} impressions · ${number(o.users)} users · ${number(o.hits)} hits · ` +
      `hit rate ${rate(o.hit_rate)} (95 % ${interval(o.ci95)}) · mean shown rating ${mean}`;
  }

  function versionCard(v, active, open) {
    const m = v.metrics || {};
    const gate = m.quality_gate || null;
    const older = active && v.created_at && active.created_at && v.created_at < active.created_at;
    const label = older ? "Roll back to this version" : "Activate";
    const action = v.active
      ? null
      : h("button", { type: "button", class: "secondary activate", "data-version": v.version, text: label,
        onclick: () => activate(v.version, label) });
    const size = v.data_size || {};
    const figures = [
      ["NDCG@10", fixed(m["valid_ndcg@10"])],
      ["RMSE", fixed(m.valid_rmse)],
      ["MAE", fixed(m.valid_mae)],
      ["epochs", m.epochs_run ?? "–"],
      ["best epoch", m.rank_epoch !== undefined ? `${m.rank_epoch} ranking / ${m.rate_epoch} rating` : "–"],
      ["rating network", m.rating_network_epoch !== undefined
        ? `best epoch ${m.rating_network_epoch} of ${m.rating_network_epochs}${m.refit_seconds !== undefined ? ", refitted on all ratings" : ""}`
        : "–"],
      ["artifact", bytes(v.artifact_bytes)],
      ["data", `${number(size.users)} users · ${number(size.movies)} movies · ${number(size.ratings)} ratings`],
    ];
    return h("article", { class: "version" + (v.active ? " is-active" : ""), "data-version": v.version },
      h("div", { class: "version-head" },
        h("span", { class: "version-name mono", text: v.version }),
        v.active ? h("span", { class: "badge active", text: "active" }) : h("span", { class: "badge", text: "inactive" }),
        h("span", { class: "muted small grow", text: `trained ${when(v.created_at)}` + (v.activated_at ? ` · activated ${when(v.activated_at)}` : "") }),
        action),
      h("ul", { class: "figures" }, figures.map(([k, val]) => h("li", null, `${k} `, h("b", { text: String(val) })))),
      gate ? h("div", { class: "gate", text: `Quality gate: ${gate.passed ? "passed" : "refused"} — ${gate.reason}` }) : null,
      h("div", { class: "gate online", "data-version": v.version, text: "online …" }),
      learningCurves(m, open));
  }

  // Open for the active and the newest version; the older ones fold away (long pages).
  function learningCurves(m, open) {
    const history = Array.isArray(m.history) ? m.history : [];
    if (!history.length) {
      return h("p", { class: "muted small", text: "No per-epoch history stored for this version (registered before it was recorded)." });
    }
    const series = (key) => history.map((e) => ({ x: e.epoch, y: e[key] }));
    return h("details", { class: "curves", open },
      h("summary", { text: `Learning curves (${history.length} epoch${history.length === 1 ? "" : "s"})` }),
      h("div", { class: "charts" },
        lineChart("Validation NDCG@10 (higher is better)", "ndcg", series("valid_ndcg"), m.rank_epoch, 3),
        lineChart("Validation RMSE (lower is better)", "rmse", series("valid_rmse"), m.rate_epoch, 3),
        lineChart("Training loss", "loss", series("train_loss"), null, 3)));
  }

  // An inline SVG line chart: one series, y from its own range, best epoch dashed.
  function lineChart(title, cls, points, bestEpoch, digits) {
    const box = h("div", { class: "chart" }, h("h3", { text: title }));
    const pts = points.filter((p) => typeof p.y === "number" && Number.isFinite(p.y));
    if (!pts.length) {
      box.append(h("p", { class: "muted small", text: "not measured" }));
      return box;
    }
    const W = 300, H = 140, L = 42, R = 10, T = 8, B = 22;
    let [x0, x1] = [Math.min(...pts.map((p) => p.x)), Math.max(...pts.map((p) => p.x))];
    let [y0, y1] = [Math.min(...pts.map((p) => p.y)), Math.max(...pts.map((p) => p.y))];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    const pad = y0 === y1 ? Math.abs(y0) * 0.05 || 0.5 : (y1 - y0) * 0.08;
    y0 -= pad; y1 += pad;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const last = pts[pts.length - 1];
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "curve " + cls,
      "aria-label": `${title}: ${pts.length} epochs, last ${last.y.toFixed(digits)}` });
    for (const y of [y0 + pad, (y0 + y1) / 2, y1 - pad]) {
      svg.append(s("line", { class: "grid-line", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }),
        s("text", { class: "tick", x: L - 4, y: sy(y) + 3, "text-anchor": "end" }, y.toFixed(digits)));
    }
    const xTicks = [...new Set([pts[0].x, pts[Math.floor(pts.length / 2)].x, last.x])];
    for (const x of xTicks) {
      svg.append(s("text", { class: "tick", x: sx(x), y: H - 6, "text-anchor": "middle" }, String(x)));
    }
    svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }),
      s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    if (typeof bestEpoch === "number" && bestEpoch >= x0 && bestEpoch <= x1) {
      svg.append(s("line", { class: "best", x1: sx(bestEpoch), x2: sx(bestEpoch), y1: T, y2: H - B },
        s("title", null, `kept epoch ${bestEpoch}`)));
    }
    svg.append(s("polyline", { class: "series " + cls, points: pts.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ") }));
    for (const p of pts) {
      svg.append(s("circle", { class: "dot " + cls, cx: sx(p.x), cy: sy(p.y), r: pts.length > 40 ? 1.5 : 3 },
        s("title", null, `epoch ${p.x}: ${p.y.toFixed(5)}`)));
    }
    box.append(svg);
    return box;
  }

  async function activate(version, label) {
    const question = `${label}: make model version ${version} the active one? ` +
      "Every recommendation will come from it from now on.";
    if (!window.confirm(question)) return;
    for (const b of document.querySelectorAll("button.activate")) b.disabled = true;
    try {
      const row = await api(`admin/models/${encodeURIComponent(version)}/activate`, { method: "POST" });
      message("models-message", `Model version ${row.version} is now active.`, "ok");
    } catch (err) {
      if (state.signedIn) message("models-message", `Activation failed: ${describe(err)}`, "error");
    }
    await loadModels();
    loadStats();
  }

  // -- experiments ------------------------------------------------------------------------------
  function fillCandidates(models) {
    const select = $("experiment-candidate");
    const wanted = select.value;
    const options = models.filter((m) => !m.active).map((m) =>
      h("option", { value: m.version, text: m.version, selected: m.version === wanted }));
    select.replaceChildren(...options);
  }

  async function loadExperiments() {
    try {
      const list = await api("admin/experiments");
      const shown = list.items.slice(0, EXPERIMENTS_SHOWN);
      const reports = await Promise.all(shown.map((e) => api(`admin/experiments/${encodeURIComponent(e.experiment_id)}`)));
      renderExperiments(reports);
    } catch (err) {
      if (state.signedIn) message("experiments-message", `Experiments unavailable: ${describe(err)}`, "error");
    }
  }

  function renderExperiments(reports) {
    const running = reports.some((r) => r.status === "running");
    $("experiment-start").disabled = running;
    if (!reports.length) {
      $("experiments").replaceChildren(h("p", { class: "muted", text: "No experiment yet." }));
      return;
    }
    $("experiments").replaceChildren(...reports.map(experimentCard));
  }

  function experimentCard(e) {
    const rows = e.arms.map((a) => h("tr", { "data-arm": a.arm },
      h("td", { "data-label": "Arm", text: a.arm }),
      h("td", { "data-label": "Version", class: "mono small", text: a.version }),
      h("td", { "data-label": "Users", text: number(a.users) }),
      h("td", { "data-label": "Impressions", text: number(a.impressions) }),
      h("td", { "data-label": "Hits", text: number(a.hits) }),
      h("td", { "data-label": "Hit rate", class: "hit-rate", text: rate(a.hit_rate) }),
      h("td", { "data-label": "95 % interval", class: "ci", text: interval(a.ci95) })));
    const d = e.difference;
    const diff = typeof d.hit_rate === "number"
      ? `candidate − control: ${(d.hit_rate * 100).toFixed(1)} points (95 % ${Array.isArray(d.ci95) ? d.ci95.map((x) => (x * 100).toFixed(1)).join(" to ") : "–"})`
      : "candidate − control: –";
    const actions = e.status === "running" ? [
      h("button", { type: "button", class: "secondary experiment-stop", text: "Stop",
        onclick: () => stopExperiment(e, false) }),
      h("button", { type: "button", class: "experiment-promote", text: "Promote the candidate",
        onclick: () => stopExperiment(e, true) }),
    ] : [];
    return h("article", { class: "version experiment" + (e.status === "running" ? " is-active" : ""), "data-experiment": e.experiment_id },
      h("div", { class: "version-head" },
        h("span", { class: "version-name", text: `${Math.round(e.share * 100)} % of users on the candidate` }),
        h("span", { class: "badge " + (e.status === "running" ? "running" : e.status === "promoted" ? "active" : ""), text: e.status }),
        h("span", { class: "muted small grow", text: `started ${when(e.started_at)}` + (e.stopped_at ? ` · ended ${when(e.stopped_at)}` : "") }),
        ...actions),
      h("div", { class: "table-wrap" }, h("table", { class: "compact arms" },
        h("thead", null, h("tr", null, ...["Arm", "Version", "Users", "Impressions", "Hits", "Hit rate", "95 % interval"].map((t) => h("th", { text: t })))),
        h("tbody", null, rows))),
      h("div", { class: "gate difference", text: diff }),
      h("div", { class: "gate verdict" }, "verdict: ", h("b", { text: e.verdict })));
  }

  async function startExperiment(event) {
    event.preventDefault();
    const candidate = $("experiment-candidate").value;
    const share = Number($("experiment-share").value);
    if (!candidate) {
      message("experiments-message", "Pick a candidate version (an inactive one).", "error");
      return;
    }
    if (!(share > 0 && share < 1)) {
      message("experiments-message", "The share is a number between 0 and 1, e.g. 0.5.", "error");
      return;
    }
    const question = `Start an experiment: ${Math.round(share * 100)} % of users get model version ${candidate}, the others the active one?`;
    if (!window.confirm(question)) return;
    $("experiment-start").disabled = true;
    try {
      const row = await api("admin/experiments", { method: "POST", body: { candidate, share } });
      message("experiments-message", `Experiment ${row.experiment_id} is running.`, "ok");
    } catch (err) {
      if (state.signedIn) message("experiments-message", `The experiment did not start: ${describe(err)}`, "error");
    }
    await loadExperiments();
  }

  async function stopExperiment(e, promote) {
    const question = promote
      ? `Promote: end the experiment and make ${e.candidate} the active version? Every recommendation will come from it from now on.`
      : `Stop the experiment? Every user gets the active version ${e.control} again.`;
    if (!window.confirm(question)) return;
    for (const b of document.querySelectorAll(".experiment button")) b.disabled = true;
    try {
      const row = await api(`admin/experiments/${encodeURIComponent(e.experiment_id)}/stop`, { method: "POST", body: { promote } });
      message("experiments-message", promote ? `Promoted: ${row.candidate} is now active.` : "The experiment is stopped.", "ok");
    } catch (err) {
      if (state.signedIn) message("experiments-message", `Stopping failed: ${describe(err)}`, "error");
    }
    await loadExperiments();
    if (promote) await loadModels();
  }

  // -- training jobs ----------------------------------------------------------------------------
  async function loadJobs() {
    let list;
    try {
      list = await api("admin/jobs?limit=10");
    } catch (err) {
      if (state.signedIn) message("retrain-message", `Training jobs unavailable: ${describe(err)}`, "error");
      return;
    }
    renderJobs(list);
    const open = list.find((j) => !TERMINAL.has(j.status));
    if (open && state.watching !== open.job_id) watchJob(open.job_id);
  }

  function jobFigures(job) {
    const m = job.metrics || {};
    const ndcg = m["valid_ndcg@10"] ?? m.valid_ndcg;
    const rmse = m.valid_rmse;
    if (m.search && job.status === "running") return `search: ${m.search.trials} trials`;
    if (ndcg === undefined && rmse === undefined) return "–";
    return `NDCG@10 ${fixed(ndcg, 3)} · RMSE ${fixed(rmse, 3)}`;
  }

  function progressBar(job) {
    const bar = h("span");
    bar.style.width = Math.round((Number(job.progress) || 0) * 100) + "%";
    return h("div", { class: "progress " + job.status, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": Math.round((Number(job.progress) || 0) * 100) }, bar);
  }

  function jobNote(job) {
    if (job.error) return h("span", { class: "small", text: job.error });
    const overrides = Object.keys(job.overrides || {}).length ? JSON.stringify(job.overrides) : "preset defaults";
    return h("span", { class: "mono small", text: overrides });
  }

  function jobRow(job) {
    return h("tr", { "data-job": job.job_id, class: TERMINAL.has(job.status) ? null : "open" },
      h("td", { "data-label": "Job" }, h("span", { class: "mono", title: job.job_id, text: job.job_id.slice(0, 8) })),
      h("td", { "data-label": "Status" }, h("span", { class: "badge " + job.status, text: job.status })),
      h("td", { "data-label": "Progress" }, h("div", { class: "progress-cell" }, progressBar(job), h("span", { class: "small", text: percent(job.progress) }))),
      h("td", { class: "num", "data-label": "Epoch", text: `${job.epoch} / ${job.epochs}` }),
      h("td", { "data-label": "Validation", text: jobFigures(job) }),
      h("td", { "data-label": "Model" }, h("span", { class: "mono small", text: job.model_version || "–" })),
      h("td", { "data-label": "Queued" }, h("span", { class: "small", text: when(job.created_at) })),
      h("td", { "data-label": "Notes" }, jobNote(job)));
  }

  function renderJobs(list) {
    if (!list.length) {
      $("jobs").replaceChildren(h("p", { class: "muted", text: "No training job yet." }));
      return;
    }
    const head = ["Job", "Status", "Progress", "Epoch", "Validation", "Model", "Queued", "Notes"];
    $("jobs").replaceChildren(h("div", { class: "table-wrap" },
      h("table", { class: "cards", id: "jobs-table" },
        h("thead", null, h("tr", null, head.map((t) => h("th", { text: t, class: t === "Epoch" ? "num" : null })))),
        h("tbody", null, list.map(jobRow)))));
  }

  function updateJobRow(job) {
    const old = document.querySelector(`#jobs-table tr[data-job="${CSS.escape(job.job_id)}"]`);
    if (old) old.replaceWith(jobRow(job));
  }

  function renderWatch(job) {
    const box = $("job-watch");
    let outcome = null;
    if (job.status === "succeeded") {
      const activated = job.metrics && job.metrics.activated;
      outcome = h("p", { class: "alert ok" },
        `Succeeded: model version ${job.model_version} `,
        activated === false ? "was registered but kept inactive by the quality gate." : "is active.");
    } else if (job.status === "failed") {
      outcome = h("p", { class: "alert error", text: `Failed: ${job.error || "no reason recorded"}` });
    }
    box.replaceChildren(
      h("div", { class: "line" },
        h("strong", null, "Job ", h("span", { class: "mono", text: job.job_id })),
        h("span", { class: "badge " + job.status, id: "watch-status", text: job.status }),
        h("span", { id: "watch-percent", text: percent(job.progress) }),
        h("span", { class: "muted", text: `epoch ${job.epoch} of ${job.epochs}` }),
        h("span", { class: "muted", text: jobFigures(job) }),
        h("span", { class: "muted", id: "watch-eta", text: etaText(job) })),
      progressBar(job),
      outcome);
    box.dataset.job = job.job_id;
    box.dataset.status = job.status;
    box.hidden = false;
  }

  // The remaining epochs at the mean pace so far (an upper bound: early stopping may end sooner).
  function etaText(job) {
    const eta = job.status === "running" && job.metrics ? job.metrics.eta_seconds : null;
    if (typeof eta !== "number") return "";
    return eta >= 90 ? `epochs left: at most ~${Math.round(eta / 60)} min` : `epochs left: at most ~${Math.round(eta)} s`;
  }

  async function watchJob(jobId) {
    const seq = ++state.watchSeq;
    state.watching = jobId;
    while (state.signedIn && state.watchSeq === seq) {
      let job;
      try {
        job = await api(`admin/jobs/${encodeURIComponent(jobId)}`);
      } catch (err) {
        if (!state.signedIn || state.watchSeq !== seq) return;
        message("retrain-message", `Cannot follow job ${jobId}: ${describe(err)}`, "error");
        await sleep(POLL_MS * 3);
        continue;
      }
      if (state.watchSeq !== seq) return;
      renderWatch(job);
      updateJobRow(job);
      if (TERMINAL.has(job.status)) {
        state.watching = null;
        await Promise.all([loadJobs(), loadModels(), loadStats()]);
        return;
      }
      await sleep(POLL_MS);
    }
  }

  async function startRetrain(event) {
    event.preventDefault();
    let body = {};
    const raw = $("retrain-overrides").value.trim();
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch (err) {
        message("retrain-message", `The overrides are not valid JSON: ${err.message}`, "error");
        return;
      }
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        message("retrain-message", "The overrides must be a JSON object, e.g. {\"epochs\": 5}.", "error");
        return;
      }
    }
    const epochs = $("retrain-epochs").value.trim();
    if (epochs) body.epochs = Number(epochs);
    $("retrain-start").disabled = true;
    try {
      const queued = await api("admin/retrain", { method: "POST", body });
      message("retrain-message", `Retrain queued as job ${queued.job_id}.`, "ok");
      await loadJobs();
      if (state.watching !== queued.job_id) watchJob(queued.job_id);
    } catch (err) {
      if (!state.signedIn) return;
      if (err.status === 409) {
        const open = err.detail && err.detail.job_id;
        message("retrain-message", `A training job is already open${open ? ` (job ${open})` : ""}: one runs at a time. Its progress is shown below.`, "warn");
        if (open && state.watching !== open) watchJob(open);
      } else if (err.status === 422) {
        message("retrain-message", `The server refused these overrides (422): ${detailText(err.detail)}`, "error");
      } else {
        message("retrain-message", `The retrain could not start: ${describe(err)}`, "error");
      }
    } finally {
      $("retrain-start").disabled = false;
    }
  }

  // -- try a user ---------------------------------------------------------------------------------
  function positiveId(value) {
    const n = Number(value);
    return Number.isInteger(n) && n > 0 ? n : null;
  }

  async function movieTitle(movieId) {
    if (!state.titles.has(movieId)) {
      state.titles.set(movieId, api(`movies/${movieId}`).then((m) => m.title, () => null));
    }
    return state.titles.get(movieId);
  }

  async function recommendationsFor(userId) {
    try {
      return { body: await api(`users/${userId}/recommendations?n=10&explain=true`), explained: true };
    } catch (err) {
      // A server without explanations refuses the unknown parameter: ask without it.
      if (err.status === 422 && JSON.stringify(err.detail).includes("explain")) {
        return { body: await api(`users/${userId}/recommendations?n=10`), explained: false };
      }
      throw err;
    }
  }

  async function showUser(userId, offset = 0) {
    state.user = userId;
    message("user-message", "");
    $("user-ratings").replaceChildren(h("p", { class: "muted", text: "Loading ratings…" }));
    if (offset === 0) $("user-recs").replaceChildren(h("p", { class: "muted", text: "Loading recommendations…" }));
    const ratingsCall = api(`users/${userId}/ratings?limit=${RATINGS_PAGE}&offset=${offset}`);
    const recsCall = offset === 0 ? recommendationsFor(userId) : null;
    const [ratings, recs] = await Promise.allSettled([ratingsCall, recsCall]);
    if (!state.signedIn || state.user !== userId) return;
    if (ratings.status === "fulfilled") renderRatings(ratings.value, offset);
    else $("user-ratings").replaceChildren(h("p", { class: "alert error", text: `Ratings unavailable: ${describe(ratings.reason)}` }));
    if (recsCall) {
      if (recs.status === "fulfilled") renderRecommendations(recs.value.body, recs.value.explained);
      else $("user-recs").replaceChildren(h("p", { class: "alert error", text: `Recommendations unavailable: ${describe(recs.reason)}` }));
    }
  }

  function renderRatings(page, offset) {
    const pane = $("user-ratings");
    const title = h("h3", { text: `Ratings of user ${page.user_id} (${number(page.total)})` });
    if (!page.total) {
      pane.replaceChildren(title, h("p", { class: "muted", text: "No ratings: recommendations for this user come from the popular list." }));
      return;
    }
    const rows = page.items.map((item) => {
      const cell = h("td", { "data-label": "Movie", class: "movie-title" }, h("span", { class: "muted", text: `#${item.movie_id}` }));
      movieTitle(item.movie_id).then((t) => {
        cell.replaceChildren(t ? t : h("span", { class: "muted", text: `#${item.movie_id} (not in the catalog)` }));
      });
      return h("tr", { "data-movie": item.movie_id }, cell,
        h("td", { "data-label": "Rating", class: "stars", text: stars(item.rating) }),
        h("td", { "data-label": "Rated", class: "small", text: fromUnix(item.timestamp) }));
    });
    const last = offset + page.items.length;
    const pager = h("div", { class: "pager" },
      h("span", { class: "muted", text: `${number(offset + 1)}–${number(last)} of ${number(page.total)}` }),
      offset > 0 ? h("button", { type: "button", class: "secondary", text: "Newer", onclick: () => showUser(page.user_id, Math.max(0, offset - RATINGS_PAGE)) }) : null,
      last < page.total ? h("button", { type: "button", class: "secondary", text: "Older", onclick: () => showUser(page.user_id, last) }) : null);
    pane.replaceChildren(title,
      h("div", { class: "table-wrap" }, h("table", { class: "compact", id: "ratings-table" },
        h("thead", null, h("tr", null, h("th", { text: "Movie" }), h("th", { text: "Rating" }), h("th", { text: "Rated" }))),
        h("tbody", null, rows))),
      pager);
  }

  function because(item, strategy) {
    if (!Array.isArray(item.because)) return null;
    if (!item.because.length) {
      const why = strategy === "popular" ? "popular with everyone" : "no single rating of theirs stands out";
      return h("div", { class: "because none", text: why });
    }
    const parts = item.because.map((b) => `${b.title} ${stars(b.rating)}`);
    return h("div", { class: "because", text: `because you rated ${parts.join(", ")}` });
  }

  function openSimilar(movieId) {
    $("movie-id").value = movieId;
    showSimilar(movieId);
    $("similar-section").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function movieList(items, strategy, id) {
    return h("ol", { class: "recs", id }, items.map((item) =>
      h("li", { "data-movie": item.movie_id },
        h("button", { type: "button", class: "link", title: "similar movies", text: item.title, onclick: () => openSimilar(item.movie_id) }),
        h("div", { class: "meta", text: [
          (item.genres || []).join(", ") || "no genres",
          `score ${fixed(item.score, 3)}`,
          typeof item.predicted_rating === "number" ? `predicted ${stars(item.predicted_rating.toFixed(1))}` : null,
        ].filter(Boolean).join(" · ") }),
        because(item, strategy))));
  }

  function renderRecommendations(body, explained, pane = "user-recs", listId = "recs-list") {
    const head = h("h3", null, "Recommendations ",
      h("span", { class: "badge " + body.strategy, text: body.strategy }),
      body.model_version ? h("span", { class: "muted small mono", text: ` ${body.model_version}` }) : null);
    const notes = [];
    if (!explained) notes.push(h("p", { class: "alert warn small", text: "This server does not explain recommendations (explain=true is refused)." }));
    const who = body.user_id === null ? "these movies" : "this user";
    if (body.strategy === "popular") notes.push(h("p", { class: "muted small", text: `The popular list: no active model, or the model does not know ${who}.` }));
    const list = body.items.length
      ? movieList(body.items, body.strategy, listId)
      : h("p", { class: "muted", text: "Nothing left to recommend." });
    $(pane).replaceChildren(head, ...notes, list);
  }

  // -- try a session ------------------------------------------------------------------------------
  async function addSessionRating(movieId, rating) {
    message("session-message", "");
    try {
      const movie = await api(`movies/${movieId}`);
      state.titles.set(movieId, Promise.resolve(movie.title));
    } catch (err) {
      const why = err.status === 404 ? `Movie ${movieId} does not exist (404).` : `Movie ${movieId} unavailable: ${describe(err)}`;
      message("session-message", why, "error");
      return;
    }
    state.session.delete(movieId); // a movie rated again moves to the end with its new stars
    state.session.set(movieId, rating);
    renderSession();
  }

  function renderSession() {
    const pane = $("session-ratings");
    const title = h("h3", { text: `Session ratings (${state.session.size})` });
    if (!state.session.size) {
      pane.replaceChildren(title, h("p", { class: "muted", text: "No ratings yet: add a movie id and its stars." }));
      return;
    }
    const rows = [...state.session].map(([movieId, rating]) => {
      const cell = h("td", { "data-label": "Movie", class: "movie-title" }, h("span", { class: "muted", text: `#${movieId}` }));
      movieTitle(movieId).then((t) => cell.replaceChildren(t || `#${movieId}`));
      const remove = h("button", { type: "button", class: "secondary small", text: "Remove", onclick: () => {
        state.session.delete(movieId);
        renderSession();
      } });
      return h("tr", { "data-movie": movieId }, cell,
        h("td", { "data-label": "Rating", class: "stars", text: stars(rating) }),
        h("td", { "data-label": "" }, remove));
    });
    pane.replaceChildren(title,
      h("div", { class: "table-wrap" }, h("table", { class: "compact", id: "session-table" },
        h("thead", null, h("tr", null, h("th", { text: "Movie" }), h("th", { text: "Rating" }), h("th", { text: "" }))),
        h("tbody", null, rows))));
  }

  async function showSession() {
    message("session-message", "");
    if (!state.session.size) {
      message("session-message", "Add at least one rating first.", "error");
      return;
    }
    const ratings = [...state.session].map(([movie_id, rating]) => ({ movie_id, rating }));
    $("session-recs").replaceChildren(h("p", { class: "muted", text: "Loading recommendations…" }));
    try {
      const body = await api("recommendations", { method: "POST", body: { ratings, n: 10, explain: true } });
      if (state.signedIn) renderRecommendations(body, true, "session-recs", "session-recs-list");
    } catch (err) {
      $("session-recs").replaceChildren(h("p", { class: "alert error", text: `Recommendations unavailable: ${describe(err)}` }));
    }
  }

  // -- similar movies -------------------------------------------------------------------------
  async function showSimilar(movieId) {
    message("similar-message", "");
    $("similar").replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    const [movie, similar] = await Promise.allSettled([api(`movies/${movieId}`), api(`movies/${movieId}/similar?n=10`)]);
    if (!state.signedIn) return;
    if (similar.status === "rejected") {
      const err = similar.reason;
      $("similar").replaceChildren();
      if (err.status === 404 && movie.status === "rejected" && movie.reason.status === 404) {
        message("similar-message", `Movie ${movieId} does not exist (404): ${detailText(movie.reason.detail)}`, "error");
      } else if (err.status === 404 && detailText(err.detail) === "Not Found") {
        message("similar-message", "This server has no similar-movies endpoint (404 Not Found).", "warn");
      } else {
        message("similar-message", `Similar movies unavailable: ${describe(err)}`, "error");
      }
      return;
    }
    const body = similar.value;
    const name = movie.status === "fulfilled" ? movie.value.title : `movie ${movieId}`;
    const head = h("h3", null, `Similar to ${name} `, h("span", { class: "badge " + body.strategy, text: body.strategy }),
      body.model_version ? h("span", { class: "muted small mono", text: ` ${body.model_version}` }) : null);
    const list = body.items.length
      ? movieList(body.items, body.strategy, "similar-list")
      : h("p", { class: "muted", text: "Nothing similar found." });
    $("similar").replaceChildren(head, list);
  }

  // -- wiring ---------------------------------------------------------------------------------------
  function start() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) {
        message("login-error", "Type the admin token first.", "error");
        return;
      }
      signIn(token);
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("stats-refresh").addEventListener("click", loadStats);
    $("models-refresh").addEventListener("click", loadModels);
    $("jobs-refresh").addEventListener("click", loadJobs);
    $("experiments-refresh").addEventListener("click", loadExperiments);
    $("experiment-form").addEventListener("submit", startExperiment);
    $("retrain-form").addEventListener("submit", startRetrain);
    $("user-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = positiveId($("user-id").value);
      if (id === null) message("user-message", "A user id is a positive whole number.", "error");
      else showUser(id);
    });
    $("session-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = positiveId($("session-movie").value);
      if (id === null) message("session-message", "A movie id is a positive whole number.", "error");
      else addSessionRating(id, Number($("session-rating").value));
    });
    $("session-show").addEventListener("click", showSession);
    $("session-clear").addEventListener("click", () => {
      state.session.clear();
      renderSession();
      $("session-recs").replaceChildren();
      message("session-message", "");
    });
    $("similar-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = positiveId($("movie-id").value);
      if (id === null) message("similar-message", "A movie id is a positive whole number.", "error");
      else showSimilar(id);
    });
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
    else $("token").focus();
  }

  start();
})();
