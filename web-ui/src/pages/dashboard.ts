// Dashboard: 24-hour totals, live fleet rates and pool health from the WatchDashboard
// stream, and trends and the top client keys by spend from GetStats.
//
// The stream's 24-hour totals are recomputed by the control plane every 30 s; the cards
// here use GetStats over the same 24 hours (refreshed every 5 s) so new traffic shows
// within seconds. Rates, pools, backends, nodes and uptime come from the stream.

import { admin, describe } from "../api";
import { buckets, COST_SERIES, requestSeries, stepOf, TimeChart, TOKEN_SERIES } from "../charts";
import { h, mount, setText } from "../dom";
import { backendStatusText } from "../enums";
import { fmtCount, fmtDuration, fmtInt, fmtPct, fmtRate, fmtTime, fmtUsd, n } from "../format";
import { Granularity, StatsDimension, type BackendLive, type ClientKey, type Dashboard, type GetStatsResponse, type StatsRow } from "../gen/sidecar/v1/admin_pb";
import type { UsageTotals } from "../gen/sidecar/v1/types_pb";
import { meter, badge, pageHeader, placeholder, section, table, type Page, type PageContext, type SubRow } from "../ui";

const REFRESH_MS = 5000;
const HOUR = 3_600_000;
/** Rows in the top client keys panel. */
const TOP_KEYS = 10;

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

/**
 * The client keys that spent most: cost descending, then requests. Requests without a key
 * (key id "") compete like a key and are shown only when among the top. None when no key
 * was used at all.
 */
function topKeys(rows: StatsRow[]): StatsRow[] {
  if (!rows.some((r) => r.keyId)) return [];
  const cost = (r: StatsRow) => r.totals?.costUsd ?? 0;
  const requests = (r: StatsRow) => n(r.totals?.requests ?? 0);
  return [...rows]
    .sort((a, b) => cost(b) - cost(a) || requests(b) - requests(a) || a.keyId.localeCompare(b.keyId))
    .slice(0, TOP_KEYS);
}

/** The key's name with its prefix (or id) small under it; "(no key)" for requests without one. */
function keyCell(r: StatsRow, k: ClientKey | undefined): HTMLElement {
  if (!r.keyId) return h("div", "name-cell", h("em", { attrs: { "data-testid": "top-key-name" } }, "(no key)"));
  const revoked = k !== undefined && n(k.revokedAtMs) > 0;
  return h(
    "div",
    { class: "name-cell", attrs: { title: `key id ${r.keyId}` } },
    h("strong", { attrs: { "data-testid": "top-key-name" } }, k?.name || r.keyName || r.keyId),
    revoked ? h("span", "muted", " (revoked)") : null,
    h("div", "sub", h("code", { attrs: { "data-testid": "top-key-prefix" } }, k?.prefix || r.keyId)),
  );
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
  const topKeysBox = h("div");
  placeholder(topKeysBox, "Loading…");
  const topKeysError = h("div", { class: "inline-error", attrs: { hidden: true, role: "status", "data-testid": "top-keys-error" } });
  const topKeysPanel = section("Top client keys by spend (24 h)", topKeysError, topKeysBox);
  topKeysPanel.setAttribute("data-testid", "top-keys-panel");

  const el = h(
    "div",
    { class: "page page-dashboard" },
    pageHeader("Dashboard", updated),
    statsError,
    section("Last 24 hours", h("div", "cards stats", s.requests.el, s.errorRate.el, s.tokens.el, s.cost.el, s.uptime.el)),
    section("Live · fleet-wide, last full minute", h("div", "cards stats", s.rpm.el, s.rl.el, s.epm.el, s.nodes.el, s.version.el)),
    section("Pools", pools),
    section("Trends", h("div", "charts", rateChart.el, tokenChart.el, costChart.el)),
    topKeysPanel,
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
  let topKeysShown = "";

  function showTopKeys(rows: StatsRow[], keys: ClientKey[]): void {
    const byId = new Map(keys.map((k) => [k.id, k]));
    const top = topKeys(rows);
    const t = (r: StatsRow) => r.totals ?? ({} as Partial<UsageTotals>);
    // Rendered again only when something shown changed (keeps a selection in the table).
    const sig = JSON.stringify(
      top.map((r) => {
        const k = byId.get(r.keyId);
        return [r.keyId, r.keyName, k?.name, k?.team, k?.prefix, String(k?.revokedAtMs ?? ""), String(t(r).requests), String(t(r).totalTokens), t(r).costUsd];
      }),
    );
    if (sig === topKeysShown) return;
    topKeysShown = sig;
    mount(
      topKeysBox,
      table<StatsRow>(
        [
          { label: "Key", cell: (r) => keyCell(r, byId.get(r.keyId)) },
          {
            label: "Team",
            cell: (r) => {
              const team = byId.get(r.keyId)?.team || r.team;
              return team ? h("span", { attrs: { "data-testid": "top-key-team" } }, team) : h("span", { class: "muted", attrs: { "data-testid": "top-key-team" } }, "—");
            },
          },
          { label: "Requests", num: true, cell: (r) => h("span", { attrs: { "data-testid": "top-key-requests" } }, fmtInt(t(r).requests ?? 0)) },
          {
            label: "Tokens",
            num: true,
            cell: (r) =>
              h(
                "span",
                { attrs: { "data-testid": "top-key-tokens", title: `${fmtInt(t(r).promptTokens ?? 0)} prompt · ${fmtInt(t(r).completionTokens ?? 0)} completion` } },
                fmtCount(t(r).totalTokens ?? 0),
              ),
          },
          { label: "Cost", num: true, cell: (r) => h("span", { attrs: { "data-testid": "top-key-cost" } }, fmtUsd(t(r).costUsd ?? 0)) },
        ],
        top,
        {
          empty: "No usage by client keys in the last 24 hours.",
          testid: "top-keys",
          stack: true,
          rowAttrs: (r) => ({ "data-testid": "top-key", "data-key": byId.get(r.keyId)?.name || r.keyName, "data-key-id": r.keyId }),
        },
      ),
    );
  }

  /** The top keys over the same 24 hours as the cards; never throws (the panel shows the error). */
  async function refreshTopKeys(now: number): Promise<void> {
    try {
      const [stats, keys] = await Promise.all([
        admin.getStats({ sinceMs: BigInt(now - 24 * HOUR), untilMs: BigInt(now), granularity: Granularity.HOUR, groupBy: [StatsDimension.KEY] }),
        // Revoked keys too: their usage stays. Without the list, names come from the stats.
        admin.listKeys({ includeRevoked: true }).catch(() => null),
      ]);
      if (disposed) return;
      topKeysError.hidden = true;
      showTopKeys(stats.rows, keys?.keys ?? []);
    } catch (e) {
      if (disposed) return;
      topKeysError.textContent = `Top keys unavailable: ${describe(e)}`;
      topKeysError.hidden = false;
    }
  }

  async function refresh(): Promise<void> {
    const now = Date.now();
    // On the same cadence as the charts, alongside them.
    const topKeysDone = refreshTopKeys(now);
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
      await topKeysDone;
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
