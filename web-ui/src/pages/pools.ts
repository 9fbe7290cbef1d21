// Routing pools (on the Settings page): the pools in the order requests try them, with
// their backend count and spill policy, and for admins a select per pool saved with
// UpdatePool (only the spill policy is sent; order and description stay as they are).

import { admin, describe } from "../api";
import { h, mount } from "../dom";
import { fmtInt } from "../format";
import { PoolSpill, type Pool } from "../gen/sidecar/v1/types_pb";
import { READ_ONLY_HINT, section, table, toast, writeButton, type PageContext } from "../ui";

type SpillName = "on_busy" | "on_failure";

const SPILLS: { name: SpillName; value: PoolSpill; label: string }[] = [
  { name: "on_busy", value: PoolSpill.ON_BUSY, label: "on_busy — overflow to the next pool" },
  { name: "on_failure", value: PoolSpill.ON_FAILURE, label: "on_failure — next pool only when this one fails" },
];

/** A pool's policy by name; unspecified is the default, on_busy. */
function spillName(v: PoolSpill): SpillName {
  return v === PoolSpill.ON_FAILURE ? "on_failure" : "on_busy";
}

export function poolsSection(ctx: PageContext): { el: HTMLElement; load: () => Promise<void>; dispose: () => void } {
  let disposed = false;
  const box = h("div", null, h("p", "muted", "Loading…"));
  const el = section(
    "Pools",
    h("p", "muted", "Requests try the pools in this order. A pool's spill policy says when a request may go on to the next pool:"),
    h(
      "ul",
      { class: "muted spill-help", attrs: { "data-testid": "spill-help" } },
      h("li", null, h("strong", null, "on_busy"), " (the default): the next pool takes a request as soon as no backend of this pool has a token now (overflow)."),
      h(
        "li",
        null,
        h("strong", null, "on_failure"),
        ": the next pool is used only when every backend of this pool is cooling, in error or disabled; otherwise the request waits in the queue for this pool.",
      ),
    ),
    box,
  );

  async function load(): Promise<void> {
    try {
      const r = await admin.listPools({});
      if (disposed) return;
      const pools = [...r.pools].sort((a, b) => a.order - b.order || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      mount(
        box,
        table<Pool>(
          [
            { label: "Order", num: true, cell: (p) => h("span", { attrs: { "data-testid": "pool-order" } }, String(p.order)) },
            {
              label: "Name",
              cell: (p) =>
                h(
                  "div",
                  "name-cell",
                  h("strong", null, p.name),
                  p.builtin ? h("span", "muted", " (built-in)") : null,
                  p.description ? h("div", { class: "sub", attrs: { "data-testid": "pool-description" } }, p.description) : null,
                ),
            },
            { label: "Backends", num: true, cell: (p) => h("span", { attrs: { "data-testid": "pool-backends" } }, fmtInt(p.backendCount)) },
            { label: "Spill", cell: (p) => spillCell(p) },
          ],
          pools,
          { empty: "No pools.", testid: "pools-table", stack: true, rowAttrs: (p) => ({ "data-pool": p.name, "data-spill": spillName(p.spill) }) },
        ),
      );
    } catch (e) {
      if (!disposed) mount(box, h("p", "inline-error", `Could not load the pools: ${describe(e)}`));
    }
  }

  /** The policy select and its Save button; Save is enabled once the choice differs. */
  function spillCell(p: Pool): HTMLElement {
    let stored = spillName(p.spill);
    const select = h(
      "select",
      { attrs: { name: "spill", "data-write": "", "data-testid": "pool-spill", "aria-label": `Spill policy of pool ${p.name}` } },
      SPILLS.map((s) => h("option", { attrs: { value: s.name } }, s.label)),
    );
    select.value = stored;
    const save = writeButton(ctx, "Save", () => void saveSpill(), "btn small primary", { "data-testid": "save-pool" });
    if (!ctx.canWrite) {
      select.disabled = true;
      select.title = READ_ONLY_HINT;
    }
    const sync = () => {
      save.disabled = !ctx.canWrite || select.value === stored;
    };
    select.addEventListener("change", sync);
    sync();

    async function saveSpill(): Promise<void> {
      const choice = SPILLS.find((s) => s.name === select.value);
      if (!choice) return;
      save.disabled = true;
      try {
        const r = await admin.updatePool({ name: p.name, spill: choice.value });
        stored = spillName(r.pool?.spill ?? choice.value);
        select.value = stored;
        select.closest("tr")?.setAttribute("data-spill", stored);
        toast(`Pool ${p.name}: spill ${stored} (config v${r.configVersion})`, "ok");
      } catch (e) {
        toast(`Could not save pool ${p.name}: ${describe(e)}`, "error");
      } finally {
        sync();
      }
    }

    return h("div", "row-actions spill-cell", select, save);
  }

  void load();
  return {
    el,
    load,
    dispose() {
      disposed = true;
    },
  };
}
