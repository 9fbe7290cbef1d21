// Usage: GetStats over a time range, hourly or daily, filtered by backend, model, pool and
// client key; a chart and a table over time, and the same figures per backend.

import { admin, describe } from "../api";
import { buckets, COST_SERIES, requestSeries, stepOf, TimeChart, TOKEN_SERIES } from "../charts";
import { h, mount, setText } from "../dom";
import { granularityFromText } from "../enums";
import { fmtBucket, fmtCount, fmtInt, fmtPct, fmtUsd, n } from "../format";
import { StatsDimension, type GetStatsResponse, type StatsRow } from "../gen/sidecar/v1/admin_pb";
import type { UsageTotals } from "../gen/sidecar/v1/types_pb";
import { pageHeader, section, table, type Column, type Page, type PageContext, poll } from "../ui";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const RANGES: { value: string; label: string; ms: number; granularity: string }[] = [
  { value: "24h", label: "Last 24 hours", ms: DAY, granularity: "hour" },
  { value: "7d", label: "Last 7 days", ms: 7 * DAY, granularity: "hour" },
  { value: "30d", label: "Last 30 days", ms: 30 * DAY, granularity: "day" },
  { value: "90d", label: "Last 90 days", ms: 90 * DAY, granularity: "day" },
];

function select(name: string, label: string, options: [string, string][], value: string): { wrap: HTMLElement; el: HTMLSelectElement } {
  const el = h(
    "select",
    { attrs: { name, id: `usage-${name}`, "data-testid": `filter-${name}` } },
    options.map(([v, t]) => h("option", { attrs: { value: v } }, t)),
  );
  el.value = value;
  return { wrap: h("div", "filter", h("label", { attrs: { for: `usage-${name}` } }, label), el), el };
}

function totalsColumns<T>(get: (r: T) => UsageTotals | undefined): Column<T>[] {
  const t = (r: T) => get(r) ?? ({} as UsageTotals);
  return [
    { label: "Requests", num: true, cell: (r) => fmtInt(t(r).requests ?? 0) },
    { label: "Succeeded", num: true, cell: (r) => fmtInt(t(r).succeeded ?? 0) },
    { label: "Errors", num: true, cell: (r) => fmtInt(t(r).errors ?? 0) },
    { label: "429s", num: true, cell: (r) => fmtInt(t(r).rateLimited ?? 0) },
    { label: "Prompt tok", num: true, cell: (r) => fmtInt(t(r).promptTokens ?? 0) },
    { label: "Completion tok", num: true, cell: (r) => fmtInt(t(r).completionTokens ?? 0) },
    { label: "Cost", num: true, cell: (r) => fmtUsd(t(r).costUsd ?? 0) },
    { label: "Avg latency", num: true, cell: (r) => (t(r).attempts ? `${Math.round(t(r).avgLatencyMs)} ms` : "—") },
  ];
}

function render(_ctx: PageContext) {
  const params = new URLSearchParams(location.search);
  const range = select("range", "Range", RANGES.map((r) => [r.value, r.label]), params.get("range") ?? "24h");
  const gran = select("granularity", "Per", [["hour", "Hour"], ["day", "Day"]], params.get("granularity") ?? "hour");
  const backend = select("backend", "Backend", [["", "All backends"]], "");
  const model = select("model", "Model", [["", "All models"]], "");
  const pool = select("pool", "Pool", [["", "All pools"]], "");
  // By the key's id (a revoked key's name may be taken again); GetStats takes id or name.
  const key = select("key", "Key", [["", "All keys"]], "");
  const summary = h("p", { class: "summary", attrs: { "data-testid": "usage-summary" } }, "Loading…");
  const countChart = new TimeChart("Requests", requestSeries(true));
  const tokenChart = new TimeChart("Tokens", TOKEN_SERIES);
  const costChart = new TimeChart("Cost (USD)", COST_SERIES);
  const byTime = h("div");
  const byBackend = h("div");
  const error = h("div", { class: "inline-error", attrs: { hidden: true, role: "alert" } });

  const el = h(
    "div",
    "page page-usage",
    pageHeader("Usage"),
    h("form", { class: "filters", attrs: { "aria-label": "Filters" } }, range.wrap, gran.wrap, backend.wrap, model.wrap, pool.wrap, key.wrap),
    error,
    summary,
    h("div", "charts", countChart.el, tokenChart.el, costChart.el),
    section("Over time", byTime),
    section("Per backend", byBackend),
  );

  let disposed = false;
  let seq = 0;

  function fillOptions(sel: HTMLSelectElement, values: [string, string][], allLabel: string): void {
    const keep = sel.value;
    mount(sel, h("option", { attrs: { value: "" } }, allLabel), values.map(([v, t]) => h("option", { attrs: { value: v } }, t)));
    sel.value = values.some(([v]) => v === keep) ? keep : "";
  }

  async function loadFilters(): Promise<void> {
    try {
      const [b, p, k] = await Promise.all([admin.listBackends({}), admin.listPools({}), admin.listKeys({ includeRevoked: true })]);
      if (disposed) return;
      fillOptions(backend.el, b.backends.map((x) => [x.id, x.name]), "All backends");
      fillOptions(pool.el, p.pools.map((x) => [x.name, x.name]), "All pools");
      // Revoked keys too: their usage stays.
      fillOptions(key.el, k.keys.map((x) => [x.id, n(x.revokedAtMs) > 0 ? `${x.name} (revoked)` : x.name]), "All keys");
    } catch {
      /* the stats call reports the problem */
    }
  }

  async function load(): Promise<void> {
    const mine = ++seq;
    const r = RANGES.find((x) => x.value === range.el.value) ?? RANGES[0];
    const granularity = gran.el.value;
    const until = Date.now();
    const since = until - r.ms;
    const filter = {
      backends: backend.el.value ? [backend.el.value] : [],
      models: model.el.value ? [model.el.value] : [],
      pools: pool.el.value ? [pool.el.value] : [],
      keys: key.el.value ? [key.el.value] : [],
    };
    const q = new URLSearchParams({ range: r.value, granularity });
    history.replaceState(null, "", `${location.pathname}?${q}`);
    // The URL and the select keep the word ("hour", "day"); the API takes the enum.
    const g = granularityFromText(granularity);
    try {
      const [stats, models] = await Promise.all([
        admin.getStats({ sinceMs: BigInt(since), untilMs: BigInt(until), granularity: g, filter, groupBy: [StatsDimension.TIME] }),
        admin.getStats({ sinceMs: BigInt(since), untilMs: BigInt(until), granularity: g, groupBy: [StatsDimension.MODEL] }),
      ]);
      if (disposed || mine !== seq) return;
      error.hidden = true;
      fillOptions(model.el, models.rows.filter((x) => x.model).map((x) => [x.model, x.model]), "All models");
      show(stats, granularity);
    } catch (e) {
      if (disposed || mine !== seq) return;
      error.textContent = `Could not load usage: ${describe(e)}`;
      error.hidden = false;
    }
  }

  function show(stats: GetStatsResponse, granularity: string): void {
    const t = stats.totals;
    setText(
      summary,
      t
        ? `${fmtInt(t.requests)} requests · ${fmtPct(n(t.errors), n(t.requests))} errors · ${fmtInt(t.rateLimited)} upstream 429s · ${fmtCount(t.totalTokens)} tokens · ${fmtUsd(t.costUsd)}`
        : "No usage.",
    );
    const step = stepOf(granularity);
    const xs = buckets(n(stats.sinceMs), n(stats.untilMs), step);
    const at = new Map(xs.map((x, i) => [x, i]));
    const ys = [0, 1, 2, 3, 4, 5].map(() => xs.map(() => 0));
    for (const row of stats.rows) {
      const i = at.get(n(row.bucketMs));
      if (i === undefined || !row.totals) continue;
      ys[0][i] += n(row.totals.requests);
      ys[1][i] += n(row.totals.rateLimited);
      ys[2][i] += n(row.totals.errors);
      ys[3][i] += n(row.totals.promptTokens);
      ys[4][i] += n(row.totals.completionTokens);
      ys[5][i] += row.totals.costUsd;
    }
    countChart.setData(xs, ys.slice(0, 3));
    tokenChart.setData(xs, ys.slice(3, 5));
    costChart.setData(xs, ys.slice(5));
    const rows = [...stats.rows].reverse();
    mount(
      byTime,
      table<StatsRow>(
        [{ label: granularity === "day" ? "Day (UTC)" : "Hour", class: "nowrap", cell: (r) => fmtBucket(r.bucketMs, granularity) }, ...totalsColumns<StatsRow>((r) => r.totals)],
        rows,
        { empty: "No usage in this range.", testid: "usage-by-time" },
      ),
    );
    mount(
      byBackend,
      table<StatsRow>(
        [
          { label: "Backend", cell: (r) => (r.backendId === "" ? h("em", null, "(answered by the proxy)") : r.backendName || h("span", "muted", `${r.backendId} (deleted)`)) },
          { label: "Pool", cell: (r) => r.pool || "—" },
          ...totalsColumns<StatsRow>((r) => r.totals),
        ],
        stats.byBackend,
        { empty: "No usage in this range.", testid: "usage-by-backend" },
      ),
    );
  }

  for (const s of [gran.el, backend.el, model.el, pool.el, key.el]) s.addEventListener("change", () => void load());
  range.el.addEventListener("change", () => {
    // Each range has a sensible granularity (hourly up to a week, then daily).
    const r = RANGES.find((x) => x.value === range.el.value);
    if (r) gran.el.value = r.granularity;
    void load();
  });
  void loadFilters();
  const stopPolling = poll(load, 15_000);

  return {
    el,
    dispose() {
      disposed = true;
      stopPolling();
      countChart.destroy();
      tokenChart.destroy();
      costChart.destroy();
    },
  };
}

export const usagePage: Page = { path: "/usage", title: "Usage", render };
