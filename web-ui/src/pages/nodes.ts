// Nodes: the proxies (data planes) the control plane knows, with the config version each
// acknowledged, whether it is connected, and when it last reported.

import { admin, describe } from "../api";
import { h, mount, setText } from "../dom";
import { fmtAgo, fmtTime, n } from "../format";
import type { Node } from "../gen/sidecar/v1/types_pb";
import { badge, pageHeader, table, type Page, type PageContext, poll } from "../ui";

function render(_ctx: PageContext) {
  const box = h("div", null, h("p", "muted", "Loading…"));
  const current = h("span", { class: "muted", attrs: { "data-testid": "current-version" } }, "");
  const el = h("div", "page page-nodes", pageHeader("Nodes", current), box);
  let disposed = false;

  async function load(): Promise<void> {
    try {
      const r = await admin.listNodes({});
      if (disposed) return;
      const version = r.configVersion;
      setText(current, `current config v${version}`);
      const nodes = [...r.nodes].sort((a, b) => Number(b.connected) - Number(a.connected) || a.id.localeCompare(b.id));
      mount(
        box,
        table<Node>(
          [
            { label: "Node", cell: (x) => h("code", "node-id", x.id) },
            { label: "Region", cell: (x) => x.region || h("span", "muted", "(none)") },
            { label: "Connected", cell: (x) => (x.connected ? badge("connected", "connected") : badge("disconnected", "disconnected")) },
            {
              label: "Config acked",
              cell: (x) =>
                h(
                  "span",
                  { class: x.ackedConfigVersion === version ? "" : "behind", attrs: { "data-testid": "acked" } },
                  `v${x.ackedConfigVersion}`,
                  x.ackedConfigVersion === version ? h("span", "sub", " current") : h("span", "sub", ` behind (v${version})`),
                ),
            },
            { label: "Last report", cell: (x) => h("span", { attrs: { title: fmtTime(x.lastReportMs) } }, fmtAgo(x.lastReportMs)) },
            { label: "Last seen", cell: (x) => h("span", { attrs: { title: fmtTime(x.lastSeenMs) } }, fmtAgo(x.lastSeenMs)) },
            { label: "Connected since", cell: (x) => (x.connected && n(x.connectedSinceMs) ? fmtTime(x.connectedSinceMs) : "—") },
            { label: "Version", cell: (x) => x.softwareVersion || "—" },
            {
              label: "Last NACK",
              cell: (x) => (x.lastNackError ? h("span", "nack", `v${x.lastNackVersion}: ${x.lastNackError}`) : h("span", "muted", "—")),
            },
          ],
          nodes,
          { empty: "No proxy has connected yet. Start one with SIDECAR_CONTROL_URL pointing here.", testid: "nodes-table", stack: true, rowAttrs: (x) => ({ "data-node": x.id }) },
        ),
      );
    } catch (e) {
      if (!disposed) mount(box, h("p", "inline-error", `Could not load nodes: ${describe(e)}`));
    }
  }

  const stopPolling = poll(load, 5000);
  return {
    el,
    dispose() {
      disposed = true;
      stopPolling();
    },
  };
}

export const nodesPage: Page = { path: "/nodes", title: "Nodes", render };
