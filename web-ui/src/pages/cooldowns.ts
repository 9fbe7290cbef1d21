// Cooldowns: the fleet-wide cooldowns that started in a range, newest first.

import { admin, describe } from "../api";
import { h, mount } from "../dom";
import { fmtMs, fmtTime, n } from "../format";
import type { CooldownEvent } from "../gen/sidecar/v1/types_pb";
import { badge, pageHeader, table, type Page, type PageContext, poll } from "../ui";

const HOUR = 3_600_000;
const RANGES: [string, string, number][] = [
  ["1h", "Last hour", HOUR],
  ["24h", "Last 24 hours", 24 * HOUR],
  ["7d", "Last 7 days", 7 * 24 * HOUR],
  ["30d", "Last 30 days", 30 * 24 * HOUR],
];

function render(_ctx: PageContext) {
  const range = h("select", { attrs: { id: "cd-range", "data-testid": "filter-range" } }, RANGES.map(([v, t]) => h("option", { attrs: { value: v } }, t)));
  range.value = "24h";
  const backend = h("select", { attrs: { id: "cd-backend", "data-testid": "filter-backend" } }, h("option", { attrs: { value: "" } }, "All backends"));
  const box = h("div", null, h("p", "muted", "Loading…"));
  const el = h(
    "div",
    "page page-cooldowns",
    pageHeader("Cooldowns"),
    h(
      "p",
      "muted intro",
      "A 429 from a provider cools its backend on every proxy: min(base·2^(n−1), max) seconds, at least the provider's Retry-After. The first success resets the count.",
    ),
    h(
      "form",
      { class: "filters", attrs: { "aria-label": "Filters" } },
      h("div", "filter", h("label", { attrs: { for: "cd-range" } }, "Range"), range),
      h("div", "filter", h("label", { attrs: { for: "cd-backend" } }, "Backend"), backend),
    ),
    box,
  );
  let disposed = false;
  let seq = 0;

  async function loadBackends(): Promise<void> {
    try {
      const r = await admin.listBackends({});
      if (disposed) return;
      const keep = backend.value;
      mount(backend, h("option", { attrs: { value: "" } }, "All backends"), r.backends.map((b) => h("option", { attrs: { value: b.id } }, b.name)));
      backend.value = r.backends.some((b) => b.id === keep) ? keep : "";
    } catch {
      /* shown by the list call */
    }
  }

  async function load(): Promise<void> {
    const mine = ++seq;
    const ms = RANGES.find(([v]) => v === range.value)?.[2] ?? 24 * HOUR;
    const now = Date.now();
    try {
      const r = await admin.listCooldowns({ sinceMs: BigInt(now - ms), untilMs: BigInt(now), backend: backend.value });
      if (disposed || mine !== seq) return;
      mount(
        box,
        table<CooldownEvent>(
          [
            { label: "Started", class: "nowrap", cell: (e) => fmtTime(e.startMs) },
            { label: "Backend", cell: (e) => e.backendName || h("span", "muted", `${e.backendId} (deleted)`) },
            { label: "State", cell: (e) => (n(e.endMs) > Date.now() ? badge("active", "active") : badge("ended", "ended")) },
            { label: "Consecutive 429s", num: true, cell: (e) => String(e.consecutiveCount) },
            { label: "Duration", num: true, cell: (e) => fmtMs(n(e.durationMs)) },
            { label: "Retry-After", num: true, cell: (e) => (e.retryAfterMs ? fmtMs(n(e.retryAfterMs)) : "—") },
            { label: "Ends", class: "nowrap", cell: (e) => fmtTime(e.endMs) },
            { label: "Caused by node", cell: (e) => h("code", null, e.nodeId || "—") },
          ],
          r.events,
          { empty: "No cooldowns in this range.", testid: "cooldowns-table", stack: true, rowAttrs: (e) => ({ "data-backend": e.backendName }) },
        ),
      );
    } catch (e) {
      if (!disposed && mine === seq) mount(box, h("p", "inline-error", `Could not load cooldowns: ${describe(e)}`));
    }
  }

  range.addEventListener("change", () => void load());
  backend.addEventListener("change", () => void load());
  void loadBackends();
  const stopPolling = poll(load, 5000);
  return {
    el,
    dispose() {
      disposed = true;
      stopPolling();
    },
  };
}

export const cooldownsPage: Page = { path: "/cooldowns", title: "Cooldowns", render };
