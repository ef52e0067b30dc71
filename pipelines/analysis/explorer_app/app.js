// The study explorer (pipelines/explorer.py writes the data): curves, claims and runs.
"use strict";

const DATA = JSON.parse(document.getElementById("data").textContent);
const state = { mode: "budgeted", view: "mean", xlog: false, paper: false, hidden: new Set() };
const KEYS = ["dataset", "backbone", "method", "variant"];
const PLOT_CONFIG = { displaylogo: false, responsive: true };

// ------------------------------------------------------------------ data helpers

const rowCache = {};
/** A table as an array of row objects (the page embeds it column by column). */
function rows(name) {
  if (!rowCache[name]) rowCache[name] = toRows(DATA.tables[name] || {});
  return rowCache[name];
}

function toRows(columns) {
  const names = Object.keys(columns);
  const count = names.length ? columns[names[0]].length : 0;
  const out = [];
  for (let i = 0; i < count; i++) {
    const row = {};
    for (const name of names) row[name] = columns[name][i];
    out.push(row);
  }
  return out;
}

function keyOf(row, names) {
  return names.map((name) => String(row[name] ?? "")).join("|");
}

function groupBy(items, keyFn) {
  const groups = new Map();
  for (const item of items) {
    const key = keyFn(item);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(item);
  }
  return groups;
}

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const fixed = (value, digits) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

// ------------------------------------------------------------------ curves

/** The legend entry of a curve row: method, variant and exit rule ('' for anytime). */
function entryOf(row) {
  return keyOf(row, ["method", "variant", "policy"]);
}

function styleOf(row) {
  return DATA.styles[`${row.method}|${row.variant}`] || { label: row.method, color: "#555", marker: "circle" };
}

function ruleOf(row) {
  return DATA.rules[row.policy] || { dash: "solid", suffix: "", points: false };
}

function entryLabel(row) {
  const name = styleOf(row).label;
  const variant = row.variant && !name.includes(row.variant) ? ` [${row.variant}]` : "";
  return name + variant + (row.policy ? ruleOf(row).suffix : "");
}

function panels() {
  const seen = groupBy(rows("runs"), (row) => keyOf(row, ["dataset", "backbone"]));
  return [...seen.values()].map((group) => ({ dataset: group[0].dataset, backbone: group[0].backbone }));
}

function label(kind, name) {
  return (DATA.labels[kind] || {})[name] || name;
}

/** Seeds of each curve (mean view tooltips): from the per-seed table. */
function seedsByCurve(mode) {
  const groups = groupBy(rows(mode), (row) => keyOf(row, [...KEYS, "policy"]));
  const out = new Map();
  for (const [key, group] of groups) out.set(key, [...new Set(group.map((row) => row.seed))].sort((a, b) => a - b));
  return out;
}

function curveRows() {
  const mean = state.view === "mean";
  const table = mean ? `${state.mode}_summary` : state.mode;
  let out = rows(table).map((row) => ({ ...row, policy: row.policy ?? "" }));
  if (state.view.startsWith("seed:")) out = out.filter((row) => String(row.seed) === state.view.slice(5));
  return out;
}

function hoverText(row, seeds) {
  const mean = state.view === "mean";
  const x = mean ? row.mflops_mean : row.mflops;
  const y = mean ? row.top1_mean : row.top1;
  const lines = [
    `<b>${entryLabel(row)}</b>`,
    `${label("dataset", row.dataset)} · ${label("backbone", row.backbone)} (${row.backbone})`,
    `method: ${row.method}${row.variant ? ` [${row.variant}]` : ""} · rule: ${row.policy || "none (anytime)"}`,
    mean ? `seeds: ${seeds.join(", ")} (mean of ${row.n_seeds ?? seeds.length})` : `seed: ${row.seed}`,
    `MFLOPs: ${fixed(x, 3)}`,
  ];
  const interval = mean && row.top1_ci_low !== null && row.top1_ci_low !== undefined;
  lines.push(`top-1: ${fixed(y, 2)} %` + (interval ? ` [${fixed(row.top1_ci_low, 2)}, ${fixed(row.top1_ci_high, 2)}] 95% interval` : ""));
  if (state.mode === "anytime") lines.push(`exit: ${row.exit}`);
  else lines.push(`budget p: ${row.p}` + (row.q !== null && row.q !== undefined ? ` (q = ${row.q})` : ""));
  if (row.exit_fractions) {
    const shares = String(row.exit_fractions).split(";").map((share) => `${(100 * Number(share)).toFixed(1)}%`);
    lines.push(`exits: ${shares.join(" · ")}`);
  }
  return lines.join("<br>");
}

function curveTrace(points, seeds) {
  const first = points[0];
  const mean = state.view === "mean";
  const xName = mean ? "mflops_mean" : "mflops";
  const yName = mean ? "top1_mean" : "top1";
  points.sort((a, b) => a[xName] - b[xName]);
  const style = styleOf(first);
  const rule = ruleOf(first);
  const y = points.map((row) => row[yName]);
  const trace = {
    type: "scatter",
    mode: rule.points ? "markers" : "lines+markers",
    name: entryLabel(first) + (mean ? "" : ` · seed ${first.seed}`),
    x: points.map((row) => row[xName]),
    y,
    line: { color: style.color, dash: rule.dash, width: 1.5 },
    marker: { color: style.color, symbol: style.marker, size: 6 },
    hovertext: points.map((row) => hoverText(row, seeds)),
    hovertemplate: "%{hovertext}<extra></extra>",
    visible: !state.hidden.has(entryOf(first)),
    meta: {
      dataset: first.dataset,
      backbone: first.backbone,
      entry: entryOf(first),
      method: first.method,
      variant: first.variant,
      rule: first.policy,
      run: mean ? null : `${keyOf(first, KEYS)}|${first.seed}`,
    },
  };
  return trace;
}

/** A mean curve's 95% interval: a band under a line, error bars on points drawn alone. */
function withInterval(trace, points) {
  const has = (row) => row.top1_ci_low !== null && row.top1_ci_low !== undefined;
  if (state.view !== "mean" || !points.some(has)) return [trace];
  const low = points.map((row, i) => (has(row) ? row.top1_ci_low : trace.y[i]));
  const high = points.map((row, i) => (has(row) ? row.top1_ci_high : trace.y[i]));
  const color = trace.line.color;
  if (trace.mode === "markers" || points.length === 1 || state.mode === "anytime") {
    const bars = { type: "data", symmetric: false, color, thickness: 1, width: 2 };
    trace.error_y = { ...bars, array: high.map((v, i) => v - trace.y[i]), arrayminus: low.map((v, i) => trace.y[i] - v) };
    return [trace];
  }
  const band = {
    type: "scatter",
    mode: "lines",
    x: [...trace.x, ...[...trace.x].reverse()],
    y: [...high, ...[...low].reverse()],
    fill: "toself",
    fillcolor: color,
    opacity: 0.07,
    line: { width: 0, color },
    hoverinfo: "skip",
    showlegend: false,
    visible: trace.visible,
    meta: { ...trace.meta, band: true },
  };
  return [band, trace];
}

function paperTraces(panel) {
  const points = rows("paper").filter(
    (row) => row.dataset === panel.dataset && row.backbone === panel.backbone && row.mode === state.mode,
  );
  return [...groupBy(points, (row) => row.label).values()].map((group) => ({
    type: "scatter",
    mode: "markers",
    name: group[0].label,
    x: group.map((row) => row.mflops),
    y: group.map((row) => row.top1),
    marker: { symbol: "star", size: 13, color: group[0].color, line: { color: "#000", width: 1 } },
    hovertext: group.map(
      (row) => `<b>${row.label}</b><br>reported on ${row.paper_dataset} (${row.source})<br>MFLOPs: ${fixed(row.mflops, 3)}<br>top-1: ${fixed(row.top1, 2)} %`,
    ),
    hovertemplate: "%{hovertext}<extra></extra>",
    visible: state.paper,
    meta: { paper: true },
  }));
}

function drawCurves() {
  const seeds = seedsByCurve(state.mode);
  const byPanel = groupBy(curveRows(), (row) => keyOf(row, ["dataset", "backbone"]));
  const container = document.getElementById("panels");
  panels().forEach((panel, index) => {
    let div = document.getElementById(`panel-${index}`);
    if (!div) {
      div = el("div", { id: `panel-${index}`, class: "panel" });
      container.append(div);
    }
    const mine = byPanel.get(keyOf(panel, ["dataset", "backbone"])) || [];
    const curveKey = (row) => keyOf(row, [...KEYS, "policy", ...(state.view === "mean" ? [] : ["seed"])]);
    const traces = [...groupBy(mine, curveKey).values()].flatMap((points) =>
      withInterval(curveTrace(points, seeds.get(keyOf(points[0], [...KEYS, "policy"])) || []), points),
    );
    const layout = {
      title: { text: `${label("dataset", panel.dataset)} · ${label("backbone", panel.backbone)}` },
      xaxis: {
        type: state.xlog ? "log" : "linear",
        title: { text: state.mode === "anytime" ? "MFLOPs of the exit" : "average MFLOPs per image" },
      },
      yaxis: { title: { text: "top-1 accuracy (%)" } },
      hovermode: "closest",
      hoverlabel: { align: "left" },
      showlegend: false,
      margin: { l: 60, r: 20, t: 50, b: 50 },
    };
    Plotly.react(div, [...traces, ...paperTraces(panel)], layout, PLOT_CONFIG);
  });
  const anyPaper = rows("paper").some((row) => row.mode === state.mode);
  document.getElementById("paper-note").textContent =
    state.paper && !anyPaper ? "the paper reports no points for this study's datasets and backbones" : "";
}

function drawLegend() {
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  const entries = groupBy(curveRows(), entryOf);
  const every = (hide) => {
    for (const key of entries.keys()) (hide ? state.hidden.add(key) : state.hidden.delete(key));
    redrawCurves();
  };
  const showAll = el("button", { id: "show-all", text: "show all" });
  const hideAll = el("button", { id: "hide-all", text: "hide all" });
  showAll.addEventListener("click", () => every(false));
  hideAll.addEventListener("click", () => every(true));
  legend.append(el("p", {}, [showAll, " ", hideAll]));
  const byMethod = groupBy([...entries.values()].map((group) => group[0]), (row) => row.method);
  for (const [method, firsts] of byMethod) {
    const keys = firsts.map(entryOf);
    const all = el("input", { type: "checkbox", "data-method": method });
    all.checked = keys.some((key) => !state.hidden.has(key));
    all.addEventListener("change", () => {
      for (const key of keys) (all.checked ? state.hidden.delete(key) : state.hidden.add(key));
      redrawCurves();
    });
    const set = el("fieldset", {}, [el("legend", {}, [el("label", {}, [all, ` ${method}`])])]);
    for (const row of firsts) {
      const box = el("input", { type: "checkbox", "data-entry": entryOf(row) });
      box.checked = !state.hidden.has(entryOf(row));
      box.addEventListener("change", () => {
        (box.checked ? state.hidden.delete(entryOf(row)) : state.hidden.add(entryOf(row)));
        redrawCurves();
      });
      const swatch = el("span", { class: "swatch", style: `border-color: ${styleOf(row).color}; border-top-style: ${ruleOf(row).dash === "solid" ? "solid" : "dashed"}` });
      set.append(el("label", {}, [box, swatch, entryLabel(row)]));
    }
    legend.append(set);
  }
}

function redrawCurves() {
  drawLegend();
  drawCurves();
}

function setUpCurves() {
  const seeds = [...new Set(rows("runs").map((row) => row.seed))].sort((a, b) => a - b);
  const view = document.getElementById("view");
  const options = [["mean", "mean with its 95% interval"], ["seeds", "every seed"]];
  for (const seed of seeds) options.push([`seed:${seed}`, `seed ${seed} only`]);
  for (const [value, text] of options) view.append(el("option", { value, text }));
  const bind = (id, property, read) =>
    document.getElementById(id).addEventListener("change", (event) => {
      state[property] = read(event.target);
      redrawCurves();
    });
  bind("mode", "mode", (target) => target.value);
  bind("view", "view", (target) => target.value);
  bind("xlog", "xlog", (target) => target.checked);
  bind("paper", "paper", (target) => target.checked);
  redrawCurves();
}

// ------------------------------------------------------------------ claims

const claimSort = { column: null, ascending: true };
const CLAIM_FILTERS = [["id", "claim"], ["backbone", "backbone"], ["verdict", "verdict"]];

function claimColumns() {
  const names = Object.keys(DATA.tables.claims || {});
  const at = names.indexOf("ci_high");
  if (at >= 0 && names.includes("estimate") && names.includes("ci_low")) names.splice(at + 1, 0, "interval");
  return names;
}

function intervalSvg(row) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", "160");
  svg.setAttribute("height", "16");
  const values = [row.estimate, row.ci_low, row.ci_high].filter((value) => typeof value === "number");
  if (!values.length) return svg;
  const low = Math.min(0, ...values);
  const high = Math.max(0, ...values);
  const pad = (high - low) * 0.05 || 1;
  const x = (value) => (10 + (140 * (value - low + pad)) / (high - low + 2 * pad)).toFixed(1);
  const add = (tag, attrs) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    svg.append(node);
  };
  add("line", { x1: x(0), x2: x(0), y1: 1, y2: 15, stroke: "#999", "stroke-dasharray": "2,2" });
  if (typeof row.ci_low === "number" && typeof row.ci_high === "number")
    add("line", { x1: x(row.ci_low), x2: x(row.ci_high), y1: 8, y2: 8, stroke: "#1f77b4", "stroke-width": 2 });
  if (typeof row.estimate === "number") add("circle", { cx: x(row.estimate), cy: 8, r: 3.5, fill: "#d62728" });
  svg.append(Object.assign(document.createElementNS(ns, "title"), { textContent: "estimate and interval; dashed: 0" }));
  return svg;
}

function compare(a, b) {
  const missing = (value) => value === null || value === undefined || value === "";
  if (missing(a) || missing(b)) return missing(a) - missing(b);
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

function drawClaims() {
  const names = claimColumns();
  const table = document.getElementById("claims-table");
  const head = el("tr");
  for (const name of names) {
    const th = el("th", { "data-column": name, text: name });
    if (name === claimSort.column) th.setAttribute("aria-sort", claimSort.ascending ? "ascending" : "descending");
    if (name !== "interval")
      th.addEventListener("click", () => {
        claimSort.ascending = claimSort.column === name ? !claimSort.ascending : true;
        claimSort.column = name;
        drawClaims();
      });
    head.append(th);
  }
  table.tHead.replaceChildren(head);
  let shown = rows("claims").filter((row) =>
    CLAIM_FILTERS.every(([column]) => {
      const select = document.getElementById(`filter-${column}`);
      return !select || select.value === "" || String(row[column]) === select.value;
    }),
  );
  if (claimSort.column) {
    const sign = claimSort.ascending ? 1 : -1;
    shown = [...shown].sort((a, b) => {
      const missing = (v) => v === null || v === undefined || v === "";
      if (missing(a[claimSort.column]) !== missing(b[claimSort.column])) return compare(a[claimSort.column], b[claimSort.column]);
      return sign * compare(a[claimSort.column], b[claimSort.column]);
    });
  }
  table.tBodies[0].replaceChildren(
    ...shown.map((row) =>
      el("tr", {}, names.map((name) => (name === "interval" ? el("td", {}, [intervalSvg(row)]) : el("td", { text: row[name] ?? "" })))),
    ),
  );
  document.getElementById("claims-note").textContent = `${shown.length} of ${rows("claims").length} rows; click a column to sort`;
}

function setUpClaims() {
  const filters = document.getElementById("claim-filters");
  for (const [column, text] of CLAIM_FILTERS) {
    if (!(column in (DATA.tables.claims || {}))) continue;
    const select = el("select", { id: `filter-${column}` }, [el("option", { value: "", text: "all" })]);
    const values = [...new Set(rows("claims").map((row) => String(row[column] ?? "")))].sort(compare);
    for (const value of values) select.append(el("option", { value, text: value }));
    select.addEventListener("change", drawClaims);
    filters.append(el("label", {}, [`${text} `, select]));
  }
  drawClaims();
}

// ------------------------------------------------------------------ runs

function runKey(run) {
  return `${keyOf(run.keys, KEYS)}|${run.keys.seed}`;
}

function lineTraces(log, names) {
  return names.map((name) => ({ type: "scatter", mode: "lines+markers", name, x: log.epoch, y: log[name] }));
}

function trainingPlots(run) {
  const log = run.train_log;
  const names = Object.keys(log).filter((name) => name !== "epoch" && name !== "seconds");
  const groups = [
    ["loss", names.filter((name) => /loss/.test(name))],
    ["top-1 (%) per exit, train and val", names.filter((name) => /top1/.test(name))],
    ["the method's diagnostics (click a legend entry to hide it)", names.filter((name) => !/loss|top1/.test(name))],
  ];
  return groups
    .filter(([, members]) => members.length)
    .map(([title, members]) => [lineTraces(log, members), { title: { text: title }, xaxis: { title: { text: "epoch" } } }]);
}

function reliabilityPlot(run) {
  const match = (row) => keyOf(row, [...KEYS, "seed"]) === runKey(run);
  const bins = rows("calibration_bins").filter(match);
  if (!bins.length) return null;
  const ece = new Map(rows("calibration").filter(match).map((row) => [row.exit, row.ece]));
  const traces = [...groupBy(bins, (row) => row.exit).values()].map((group) => ({
    type: "scatter",
    mode: "lines+markers",
    name: `exit ${group[0].exit}` + (ece.has(group[0].exit) ? ` (ECE ${fixed(ece.get(group[0].exit), 2)})` : ""),
    x: group.map((row) => row.confidence),
    y: group.map((row) => row.accuracy),
    text: group.map((row) => `${row.count} test images`),
  }));
  traces.push({ type: "scatter", mode: "lines", name: "perfect calibration", x: [0, 1], y: [0, 1], line: { color: "#999", dash: "dot" } });
  const layout = {
    title: { text: "reliability on test (accuracy against confidence per bin)" },
    xaxis: { title: { text: "confidence" }, range: [0, 1] },
    yaxis: { title: { text: "accuracy" }, range: [0, 1] },
  };
  return [traces, layout];
}

function showRun(path) {
  const run = DATA.runs.find((item) => item.path === path);
  const page = document.getElementById("run-page");
  if (!run) return;
  history.replaceState(null, "", `#run=${path}`);
  const links = el("ul", {}, run.links.map((href) => el("li", {}, [el("a", { href, text: href.replace(/^\.\.\//, "") })])));
  const plots = el("div", { class: "run-plots" });
  page.replaceChildren(el("h2", { text: run.path }), el("h3", { text: "files" }), links, el("h3", { text: "training and calibration" }), plots, el("h3", { text: "resolved config (config.yaml)" }), el("pre", { text: run.config || "(no config.yaml)" }));
  const charts = trainingPlots(run);
  const reliability = reliabilityPlot(run);
  if (reliability) charts.push(reliability);
  if (!charts.length) plots.append(el("p", { class: "note", text: "no training log or calibration for this run" }));
  for (const [traces, layout] of charts) {
    const div = el("div", { class: "run-plot" });
    plots.append(div);
    Plotly.newPlot(div, traces, { ...layout, margin: { l: 55, r: 10, t: 40, b: 45 }, legend: { font: { size: 10 } } }, PLOT_CONFIG);
  }
}

function setUpRuns() {
  const list = document.getElementById("run-list");
  const filter = document.getElementById("run-filter");
  const fill = () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    list.replaceChildren(
      ...DATA.runs
        .filter((run) => words.every((word) => run.path.toLowerCase().includes(word)))
        .map((run) => el("option", { value: run.path, text: run.path.replace(/^runs\//, "") })),
    );
  };
  filter.addEventListener("input", fill);
  list.addEventListener("change", () => showRun(list.value));
  fill();
}

// ------------------------------------------------------------------ tabs

function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== name;
  if (name === "runs" && !document.getElementById("run-page").childElementCount && DATA.runs.length) {
    const list = document.getElementById("run-list");
    list.value = DATA.runs[0].path;
    showRun(DATA.runs[0].path);
  }
  for (const plot of document.querySelectorAll(`#${name} .js-plotly-plot`)) Plotly.Plots.resize(plot);
}

document.getElementById("description").textContent = DATA.study.description;
for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => showTab(button.dataset.tab));
setUpCurves();
setUpClaims();
setUpRuns();
if (location.hash.startsWith("#run=")) {
  showTab("runs");
  const path = decodeURIComponent(location.hash.slice(5));
  document.getElementById("run-list").value = path;
  showRun(path);
}
document.body.dataset.ready = "true";
