// Dashboard: 24-hour totals, live fleet rates and pool health from the WatchDashboard
// stream, and trends from GetStats.
//
// The stream's 24-hour totals are recomputed by the control plane every 30 s; the cards
// here use GetStats over the same 24 hours (refreshed every 5 s) so new traffic shows
// within seconds. Rates, pools, backends, nodes and uptime come from the stream.

import { admin, describe } from "../api";
import { buckets, COST_SERIES, requestSeries, stepOf, TimeChart, TOKEN_SERIES } from "../charts";
import { h, mount, setText } from "../dom";
import { backendStatusText } from "../enums";
import { fmtCount, fmtDuration, fmtInt, fmtPct, fmtRate, fmtTime, fmtUsd, n } from "../format";
import { Granularity, StatsDimension, type BackendLive, type Dashboard, type GetStatsResponse } from "../gen/sidecar/v1/admin_pb";
import type { UsageTotals } from "../gen/sidecar/v1/types_pb";
import { meter, badge, pageHeader, section, table, type Page, type PageContext, type SubRow } from "../ui";

const REFRESH_MS = 5000;
const HOUR = 3_600_000;

interface Stat {
  el: HTMLElement;
  value: HTMLElement;
  sub: HTMLElement;
}

function stat(id: string, label: string): Stat {
  const value = h("div", "stat-value", "—");
  const sub = h("div", "stat-sub", "");
  const el = h("div", { class: "stat", attrs: { "data-testid": `stat-${id}` } }, h("div", "stat-label", label), value, sub);
  return { el, value, sub };
}

function series(resp: GetStatsResponse, stepMs: number, pick: ((t: UsageTotals) => number)[]): [number[], number[][]] {
  const xs = buckets(n(resp.sinceMs), n(resp.untilMs), stepMs);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = pick.map(() => xs.map(() => 0));
  for (const row of resp.rows) {
    const i = index.get(n(row.bucketMs));
    if (i === undefined || !row.totals) continue;
    pick.forEach((f, k) => (ys[k][i] += f(row.totals!)));
  }
  return [xs, ys];
}

/**
 * A backend's models that have their own limits, one line each under the backend's row:
 * the model's figures under the backend's own (in window / its RPM, its bucket).
 */
function modelRows(b: BackendLive): SubRow[] {
  return b.models.map((m) => ({
    cells: {
      Backend: h("span", "model-live-name", m.model),
      "In window": `${m.inWindow} / ${m.rpmLimit}`,
      Bucket: meter(m.bucketFill),
    },
    labels: { Backend: "Model" },
    attrs: {
      "data-testid": "model-live",
      "data-model": m.model,
      "data-parent": b.name,
      title: `${m.model} on ${b.name}: its own limits, within the backend's`,
    },
  }));
}

function render(ctx: PageContext) {
  const updated = h("span", { class: "muted", attrs: { "data-testid": "dashboard-updated" } }, "");
  const s = {
    requests: stat("requests", "Requests"),
    errorRate: stat("error-rate", "Error rate"),
    tokens: stat("tokens", "Tokens"),
    cost: stat("cost", "Cost"),
    uptime: stat("uptime", "Uptime"),
    rpm: stat("rpm", "Requests / min"),
    rl: stat("rate-limited", "429s / min"),
    epm: stat("errors", "Errors / min"),
    nodes: stat("nodes", "Proxies connected"),
    version: stat("config-version", "Config version"),
  };
  const pools = h("div", { class: "cards pools", attrs: { "data-testid": "pools" } });
  const backends = h("div");
  const rateChart = new TimeChart("Per minute, last hour", requestSeries(false));
  const tokenChart = new TimeChart("Tokens per hour, last 24 h", TOKEN_SERIES);
  const costChart = new TimeChart("Cost per hour, last 24 h (USD)", COST_SERIES);
  const statsError = h("div", { class: "inline-error", attrs: { hidden: true, role: "status" } });

  const el = h(
    "div",
    { class: "page page-dashboard" },
    pageHeader("Dashboard", updated),
    statsError,
    section("Last 24 hours", h("div", "cards stats", s.requests.el, s.errorRate.el, s.tokens.el, s.cost.el, s.uptime.el)),
    section("Live · fleet-wide, last full minute", h("div", "cards stats", s.rpm.el, s.rl.el, s.epm.el, s.nodes.el, s.version.el)),
    section("Pools", pools),
    section("Trends", h("div", "charts", rateChart.el, tokenChart.el, costChart.el)),
    section("Backends (live)", backends),
  );

  function showTotals(t: UsageTotals | undefined): void {
    if (!t) return;
    setText(s.requests.value, fmtInt(t.requests));
    setText(s.requests.sub, `${fmtInt(t.succeeded)} succeeded upstream`);
    setText(s.errorRate.value, fmtPct(n(t.errors), n(t.requests)));
    setText(s.errorRate.sub, `${fmtInt(t.errors)} errors · ${fmtInt(t.rateLimited)} upstream 429s`);
    setText(s.tokens.value, fmtCount(t.totalTokens));
    setText(s.tokens.sub, `${fmtCount(t.promptTokens)} prompt · ${fmtCount(t.completionTokens)} completion`);
    setText(s.cost.value, fmtUsd(t.costUsd));
    setText(s.cost.sub, t.attempts ? `avg latency ${Math.round(t.avgLatencyMs)} ms` : "no upstream calls");
  }

  function onLive(d: Dashboard): void {
    setText(updated, `Live update ${fmtTime(d.atMs)}`);
    setText(s.uptime.value, fmtDuration(n(d.uptimeSeconds)));
    setText(s.uptime.sub, "control plane");
    setText(s.rpm.value, fmtRate(d.requestsPerMin));
    setText(s.rl.value, fmtRate(d.rateLimitedPerMin));
    setText(s.epm.value, fmtRate(d.errorsPerMin));
    setText(s.nodes.value, `${d.nodesConnected} / ${d.nodesTotal}`);
    setText(s.nodes.sub, d.nodesConnected < d.nodesTotal ? `${d.nodesTotal - d.nodesConnected} away` : "all connected");
    setText(s.version.value, `v${d.configVersion}`);
    if (!haveStats) showTotals(d.totals);
    mount(
      pools,
      d.pools.map((p) =>
        h(
          "div",
          { class: "pool-card", attrs: { "data-testid": "pool", "data-pool": p.name } },
          h("h3", null, p.name),
          h(
            "dl",
            "pool-counts",
            (["healthy", "cooling", "error", "disabled"] as const).map((k) =>
              h(
                "div",
                `c-${k}${p[k] ? "" : " zero"}`,
                h("dt", null, k),
                h("dd", { attrs: { "data-count": k } }, String(p[k])),
              ),
            ),
          ),
        ),
      ),
    );
    mount(
      backends,
      table(
        [
          { label: "Backend", cell: (b) => b.name },
          { label: "Pool", cell: (b) => b.pool },
          { label: "Status", cell: (b) => badge(backendStatusText(b.status)) },
          { label: "Req/min", num: true, cell: (b) => fmtRate(b.requestsPerMin) },
          { label: "429/min", num: true, cell: (b) => fmtRate(b.rateLimitedPerMin) },
          { label: "Err/min", num: true, cell: (b) => fmtRate(b.errorsPerMin) },
          { label: "In window", num: true, cell: (b) => `${b.inWindow} / ${b.rpmLimit}` },
          { label: "Bucket", cell: (b) => meter(b.bucketFill) },
          { label: "Cooldown", cell: (b) => (b.cooldownRemainingMs > 0n ? fmtDuration(Math.ceil(n(b.cooldownRemainingMs) / 1000)) : "—") },
        ],
        d.backends,
        {
          empty: "No backends yet. Add one on the Providers page.",
          testid: "live-backends",
          stack: true,
          rowAttrs: (b) => ({ "data-backend": b.name }),
          subRows: modelRows,
        },
      ),
    );
  }

  let haveStats = false;
  let disposed = false;
  let timer: number | undefined;

  async function refresh(): Promise<void> {
    const now = Date.now();
    try {
      const [day, hour] = await Promise.all([
        admin.getStats({ sinceMs: BigInt(now - 24 * HOUR), untilMs: BigInt(now), granularity: Granularity.HOUR, groupBy: [StatsDimension.TIME] }),
        admin.getStats({ sinceMs: BigInt(now - HOUR), untilMs: BigInt(now), granularity: Granularity.MINUTE, groupBy: [StatsDimension.TIME] }),
      ]);
      if (disposed) return;
      haveStats = true;
      statsError.hidden = true;
      showTotals(day.totals);
      const [hx, hy] = series(hour, stepOf("minute"), [(t) => n(t.requests), (t) => n(t.rateLimited), (t) => n(t.errors)]);
      rateChart.setData(hx, hy);
      const [dx, dy] = series(day, stepOf("hour"), [(t) => n(t.promptTokens), (t) => n(t.completionTokens)]);
      tokenChart.setData(dx, dy);
      const [cx, cy] = series(day, stepOf("hour"), [(t) => t.costUsd]);
      costChart.setData(cx, cy);
    } catch (e) {
      if (disposed) return;
      statsError.textContent = `Statistics unavailable: ${describe(e)}`;
      statsError.hidden = false;
    } finally {
      if (!disposed) timer = window.setTimeout(() => void refresh(), REFRESH_MS);
    }
  }

  const unsubscribe = ctx.live.subscribe(onLive);
  void refresh();

  return {
    el,
    dispose() {
      disposed = true;
      window.clearTimeout(timer);
      unsubscribe();
      rateChart.destroy();
      tokenChart.destroy();
      costChart.destroy();
    },
  };
}

export const dashboardPage: Page = { path: "/", title: "Dashboard", render };
