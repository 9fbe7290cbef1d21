// Keys: the client keys (sk-sc-…) that may use the proxies (docs/keys.md). The list shows
// each key's prefix, never its secret; admins create, edit, enable/disable, rotate and
// revoke keys. A secret comes back only from CreateKey and RotateKey and is shown once, in
// a box that clears it when closed: the page keeps it nowhere else.
// The forms set a key's fleet-wide request limit (RPM) and its spend budget per UTC day or
// month; token and concurrency limits are not offered: the control plane refuses them
// until they are enforced.

import { admin, callError, Code, describe } from "../api";
import { h, mount, setText } from "../dom";
import { budgetPeriodFromText, budgetPeriodText } from "../enums";
import { fmtInt, fmtTime, n } from "../format";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { BudgetPeriod, ClientKey, CreateKeyRequestSchema, Dashboard, UpdateKeyRequestSchema } from "../gen/sidecar/v1/admin_pb";
import type { Pool } from "../gen/sidecar/v1/types_pb";
import { confirmDialog, field, FieldErrors, modal, pageHeader, table, toast, writeButton, type Field, type Page, type PageContext } from "../ui";

type CreateInit = MessageInitShape<typeof CreateKeyRequestSchema>;
type UpdateInit = MessageInitShape<typeof UpdateKeyRequestSchema>;

export type KeyState = "active" | "disabled" | "expired" | "revoked";

/** What a proxy does with the key now, in the order sidecarctl names it. */
export function keyState(k: ClientKey, now = Date.now()): KeyState {
  if (n(k.revokedAtMs) > 0) return "revoked";
  if (!k.enabled) return "disabled";
  const exp = n(k.expiresAtMs);
  if (exp > 0 && exp <= now) return "expired";
  return "active";
}

const STATE_HINT: Record<KeyState, string> = {
  active: "accepted by every proxy",
  disabled: "refused (key_disabled) until enabled again",
  expired: "refused (key_expired); set a later expiry to use it again",
  revoked: "refused for good; kept in the list so its history keeps its id",
};

/** A problem found before sending (an unreadable date, say). */
class LocalError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(message);
  }
}

function list(v: string): string[] {
  return v
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function sameList(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function pad(x: number): string {
  return String(x).padStart(2, "0");
}

/** Unix ms as a `datetime-local` value (local time, to the minute); "" for 0. */
function toLocalInput(ms: number): string {
  if (!ms) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A `datetime-local` value (local time) as Unix ms; 0 when empty (never expires). */
function fromLocalInput(v: string, path: string): number {
  if (!v.trim()) return 0;
  const ms = new Date(v.trim()).getTime();
  if (!Number.isFinite(ms)) throw new LocalError(path, `is not a date and time (got ${JSON.stringify(v)})`);
  return ms;
}

/** A request limit (requests per minute); 0 when empty. */
function rpmValue(el: HTMLInputElement, path: string, unit = "requests per minute"): number {
  const v = el.value.trim();
  if (v === "") return 0;
  if (!/^\d+$/.test(v)) throw new LocalError(path, `must be a whole number of ${unit} (got ${JSON.stringify(v)})`);
  const x = Number(v);
  if (x > 4294967295) throw new LocalError(path, "must be between 0 and 4294967295");
  return x;
}

/** An amount in USD ("50", "$12.50"); 0 when empty. The server judges the range. */
function usdValue(el: HTMLInputElement, path: string): number {
  const v = el.value.trim().replace(/^\$/, "");
  if (v === "") return 0;
  const x = Number(v);
  if (!Number.isFinite(x)) throw new LocalError(path, `must be an amount in USD (got ${JSON.stringify(el.value.trim())})`);
  return x;
}

/** A key's budget: "$50.00/month", "$5.00/day"; "" without one. */
export function budgetText(usd: number, period: BudgetPeriod): string {
  if (!(usd > 0)) return "";
  const cents = Math.round(usd * 100);
  const amount = Math.abs(usd * 100 - cents) < 1e-6 ? (cents / 100).toFixed(2) : String(usd);
  return `$${amount}/${budgetPeriodText(period) || "month"}`;
}

function limitsCell(k: ClientKey): HTMLElement {
  const budget = budgetText(k.budgetUsd, k.budgetPeriod);
  if (!k.rpmLimit && !k.tpmLimit && !k.maxConcurrent && !budget) return h("span", { class: "muted", attrs: { "data-testid": "key-limits" } }, "none");
  return h(
    "div",
    { class: "nowrap", attrs: { "data-testid": "key-limits" } },
    k.rpmLimit ? h("div", { attrs: { "data-testid": "key-rpm", title: "requests per minute, fleet-wide" } }, `${fmtInt(k.rpmLimit)} RPM`) : null,
    k.tpmLimit ? h("div", { attrs: { "data-testid": "key-tpm", title: "tokens per minute, fleet-wide" } }, `${fmtInt(k.tpmLimit)} TPM`) : null,
    k.maxConcurrent ? h("div", { attrs: { "data-testid": "key-concurrent", title: "requests in flight at once, fleet-wide" } }, `${fmtInt(k.maxConcurrent)} at once`) : null,
    budget ? h("div", { attrs: { "data-testid": "key-budget", title: "spend budget per UTC day or calendar month" } }, budget) : null,
  );
}

function chips(values: string[], testid: string): HTMLElement {
  if (!values.length) return h("span", { class: "muted", attrs: { "data-testid": testid } }, "all");
  return h(
    "ul",
    { class: "chips", attrs: { "data-testid": testid } },
    values.map((v) => h("li", "chip", v)),
  );
}

function stateBadge(state: KeyState): HTMLElement {
  return h("span", { class: `badge badge-key-${state}`, attrs: { "data-status": state, "data-testid": "key-state", title: STATE_HINT[state] } }, state);
}

/**
 * Shows a secret once, with a Copy button and the note that it is never shown again. The
 * secret lives only in the box's input; closing the box clears it and removes the box.
 */
function showSecret(title: string, what: string, secret: string): void {
  const input = h("input", { attrs: { type: "text", readonly: true, spellcheck: "false", autocomplete: "off", "data-testid": "key-secret", "aria-label": "Key secret" } });
  input.value = secret;
  const copy = h("button", { class: "btn", attrs: { type: "button", "data-testid": "key-secret-copy" } }, "Copy");
  copy.addEventListener("click", () => {
    input.select();
    void navigator.clipboard?.writeText(input.value).then(
      () => toast("Copied.", "ok"),
      () => toast("Press Ctrl+C (⌘C) to copy the selected key.", "info"),
    );
  });
  const done = h("button", { class: "btn primary", attrs: { type: "button", "data-testid": "key-secret-done" } }, "Done");
  const m = modal({
    title,
    body: [
      h("p", null, what),
      h("div", "secret-row", input, copy),
      h(
        "p",
        { class: "secret-note", attrs: { "data-testid": "key-secret-note" } },
        h("strong", null, "Shown only this once."),
        " Copy it now: the control plane stores only its hash, and neither the console nor the API can show it again. Lost, it can only be rotated.",
      ),
      h("div", "dialog-actions", done),
    ],
    testid: "key-secret-dialog",
  });
  done.addEventListener("click", () => m.close());
  m.dialog.addEventListener("close", () => {
    input.value = "";
  });
  input.focus();
  input.select();
}

function render(ctx: PageContext) {
  let keys: ClientKey[] = [];
  let pools: Pool[] = [];
  let includeRevoked = false;
  let rendered = "";
  let seenVersion: bigint | null = null;
  let disposed = false;

  const box = h("div", null, h("p", "muted", "Loading…"));
  const count = h("span", { class: "muted", attrs: { "data-testid": "keys-count" } }, "");
  const showRevoked = h("input", { attrs: { type: "checkbox", "data-testid": "show-revoked" } });
  showRevoked.addEventListener("change", () => {
    includeRevoked = showRevoked.checked;
    void load();
  });
  const el = h(
    "div",
    "page page-keys",
    pageHeader(
      "Keys",
      count,
      h("label", "check", showRevoked, " Show revoked"),
      writeButton(ctx, "Create key", () => openForm(null), "btn primary", { "data-testid": "create-key" }),
    ),
    h(
      "p",
      "muted intro",
      "Client keys (sk-sc-…) say who may use the proxies and which models and pools they may use. Only a key's prefix is shown here: its secret is shown once, when it is created or rotated. Every proxy checks keys locally, from its config snapshot.",
    ),
    box,
  );

  /** What the table shows, to render it again only when that changes. */
  function signature(): string {
    const now = Date.now();
    return JSON.stringify(
      keys.map((k) => [k.id, k.name, k.team, k.prefix, k.models, k.pools, k.rpmLimit, k.tpmLimit, k.maxConcurrent, k.budgetUsd, k.budgetPeriod, String(k.expiresAtMs), String(k.createdAtMs), String(k.resourceVersion), keyState(k, now)]),
    );
  }

  let loads = 0;
  async function load(): Promise<void> {
    const mine = ++loads;
    try {
      const [k, p] = await Promise.all([admin.listKeys({ includeRevoked }), admin.listPools({})]);
      // A newer load (the toggle flipped meanwhile, say) wins.
      if (disposed || mine !== loads) return;
      keys = k.keys;
      pools = [...p.pools].sort((a, b) => a.order - b.order);
      renderTable();
    } catch (e) {
      if (!disposed && mine === loads) {
        rendered = "";
        mount(box, h("p", "inline-error", `Could not load the keys: ${describe(e)}`));
      }
    }
  }

  function renderTable(): void {
    const sig = `${includeRevoked}|${signature()}`;
    if (sig === rendered) return;
    rendered = sig;
    const live = keys.filter((k) => keyState(k) !== "revoked").length;
    const revoked = keys.length - live;
    setText(count, `${live} key${live === 1 ? "" : "s"}${includeRevoked ? ` · ${revoked} revoked` : ""}`);
    mount(
      box,
      table<ClientKey>(
        [
          {
            label: "Name",
            cell: (k) => h("div", "name-cell", h("strong", { attrs: { "data-testid": "key-name" } }, k.name), h("div", "sub", h("code", null, k.id))),
          },
          { label: "Prefix", cell: (k) => h("code", { class: "key", attrs: { "data-testid": "key-prefix" } }, k.prefix) },
          // In a span: on narrow screens the cell is a grid that would stretch the badge.
          { label: "State", cell: (k) => h("span", null, stateBadge(keyState(k))) },
          { label: "Team", cell: (k) => (k.team ? h("span", { attrs: { "data-testid": "key-team" } }, k.team) : h("span", { class: "muted", attrs: { "data-testid": "key-team" } }, "—")) },
          { label: "Models", cell: (k) => chips(k.models, "key-models") },
          { label: "Pools", cell: (k) => chips(k.pools, "key-pools") },
          { label: "Limits", cell: (k) => limitsCell(k) },
          {
            label: "Expires",
            cell: (k) =>
              n(k.expiresAtMs)
                ? h("span", { class: "nowrap", attrs: { "data-testid": "key-expires" } }, fmtTime(k.expiresAtMs))
                : h("span", { class: "muted", attrs: { "data-testid": "key-expires" } }, "never"),
          },
          {
            label: "Created",
            cell: (k) =>
              h(
                "span",
                { class: "nowrap", attrs: { "data-testid": "key-created", title: k.createdBy ? `by ${k.createdBy}` : "" } },
                fmtTime(k.createdAtMs),
                n(k.rotatedAtMs) ? h("div", "sub", `rotated ${fmtTime(k.rotatedAtMs)}`) : null,
                n(k.revokedAtMs) ? h("div", "sub", `revoked ${fmtTime(k.revokedAtMs)}`) : null,
              ),
          },
          { label: "", class: "actions", cell: (k) => actions(k) },
        ],
        keys,
        {
          empty: includeRevoked ? "No keys." : ctx.canWrite ? "No keys yet. Create one with “Create key”." : "No keys yet.",
          testid: "keys-table",
          stack: true,
          rowAttrs: (k) => ({ "data-key": k.name, "data-key-id": k.id, "data-state": keyState(k) }),
        },
      ),
    );
  }

  function actions(k: ClientKey): HTMLElement {
    // A revoked key is never accepted again: nothing left to do with it.
    if (keyState(k) === "revoked") return h("div", "row-actions", h("span", "muted", "revoked"));
    return h(
      "div",
      "row-actions",
      writeButton(ctx, k.enabled ? "Disable" : "Enable", () => void toggle(k), "btn small", { "data-testid": "key-toggle" }),
      writeButton(ctx, "Edit", () => openForm(k), "btn small", { "data-testid": "key-edit" }),
      writeButton(ctx, "Rotate", () => void rotate(k), "btn small", { "data-testid": "key-rotate" }),
      writeButton(ctx, "Revoke", () => void revoke(k), "btn small danger", { "data-testid": "key-revoke" }),
    );
  }

  async function toggle(k: ClientKey): Promise<void> {
    try {
      const r = await admin.updateKey({ id: k.id, enabled: !k.enabled, expectedResourceVersion: k.resourceVersion });
      toast(`${r.enabled ? "Enabled" : "Disabled"} key ${r.name}`, "ok");
    } catch (e) {
      toast(`Could not ${k.enabled ? "disable" : "enable"} ${k.name}: ${describe(e)}`, "error");
    }
    await load();
  }

  async function rotate(k: ClientKey): Promise<void> {
    const yes = await confirmDialog({
      title: "Rotate key",
      message: [
        "Give key “",
        h("strong", null, k.name),
        "” a new secret? The current secret (",
        h("code", null, k.prefix),
        ") stops working at once; the key keeps its id, scope and history.",
      ],
      confirm: "Rotate",
    });
    if (!yes) return;
    try {
      const r = await admin.rotateKey({ id: k.id });
      showSecret(`New secret for ${r.key?.name ?? k.name}`, "The key has a new secret; the old one is refused from now on.", r.secret);
    } catch (e) {
      toast(`Could not rotate ${k.name}: ${describe(e)}`, "error");
    }
    await load();
  }

  async function revoke(k: ClientKey): Promise<void> {
    const yes = await confirmDialog({
      title: "Revoke key",
      message: [
        "Revoke key “",
        h("strong", null, k.name),
        "” (",
        h("code", null, k.prefix),
        ")? Every proxy refuses it from the next snapshot, within moments. This cannot be undone; it stays listed under “Show revoked”.",
      ],
      confirm: "Revoke",
      danger: true,
    });
    if (!yes) return;
    try {
      await admin.revokeKey({ id: k.id });
      toast(`Revoked ${k.name}`, "ok");
    } catch (e) {
      toast(`Could not revoke ${k.name}: ${describe(e)}`, "error");
    }
    await load();
  }

  function openForm(existing: ClientKey | null): void {
    if (!ctx.canWrite) return;
    const general = h("div", { class: "form-error", attrs: { role: "alert", hidden: true, "data-testid": "form-error" } });
    const errors = new FieldErrors(general);
    const reg = (path: string, f: Field) => {
      errors.register(path, f);
      return f.wrap;
    };
    const text = (attrs: Record<string, string>) => h("input", { attrs: { type: "text", autocomplete: "off", spellcheck: "false", ...attrs } });

    const name = text({ name: "name", placeholder: "billing-agent" });
    const team = text({ name: "team", placeholder: "optional" });
    const models = text({ name: "models", placeholder: "all models" });
    const keyPools = text({ name: "pools", placeholder: "all pools" });
    const expires = h("input", { attrs: { type: "datetime-local", name: "expires" } });
    const rpm = text({ name: "rpm_limit", inputmode: "numeric", placeholder: "0" });
    const tpm = text({ name: "tpm_limit", inputmode: "numeric", placeholder: "0" });
    const concurrent = text({ name: "max_concurrent", inputmode: "numeric", placeholder: "0" });
    const budget = text({ name: "budget_usd", inputmode: "decimal", placeholder: "0" });
    const period = h(
      "select",
      { attrs: { name: "budget_period" } },
      h("option", { attrs: { value: "day" } }, "day (UTC)"),
      h("option", { attrs: { value: "month" } }, "month (UTC)"),
    );
    period.value = "month";
    const neverBtn = h("button", { class: "btn small", attrs: { type: "button", "data-testid": "key-no-expiry" }, on: { click: () => (expires.value = "") } }, "Never");
    if (existing) {
      name.value = existing.name;
      team.value = existing.team;
      models.value = existing.models.join(", ");
      keyPools.value = existing.pools.join(", ");
      expires.value = toLocalInput(n(existing.expiresAtMs));
      rpm.value = existing.rpmLimit ? String(existing.rpmLimit) : "";
      tpm.value = existing.tpmLimit ? String(existing.tpmLimit) : "";
      concurrent.value = existing.maxConcurrent ? String(existing.maxConcurrent) : "";
      budget.value = existing.budgetUsd ? String(existing.budgetUsd) : "";
      period.value = budgetPeriodText(existing.budgetPeriod) || "month";
    }
    const initialExpiry = expires.value;
    const initialRpm = rpm.value;
    const initialTpm = tpm.value;
    const initialConcurrent = concurrent.value;
    const initialBudget = budget.value;
    const initialPeriod = period.value;
    const poolNames = pools.map((p) => p.name);

    const expiresField = field("Expires", expires, { hint: "local time; empty = never expires" });
    expiresField.wrap.append(h("div", "key-tools", neverBtn));
    const save = h("button", { class: "btn primary", attrs: { type: "submit", "data-write": "", "data-testid": "save-key" } }, existing ? "Save changes" : "Create key");
    const cancel = h("button", { class: "btn", attrs: { type: "button" } }, "Cancel");
    const form = h(
      "form",
      { class: "key-form", attrs: { novalidate: true, "data-testid": "key-form" } },
      general,
      h(
        "fieldset",
        "grid2",
        h("legend", null, "Key"),
        reg("name", field("Name", name, { hint: "unique among keys not revoked; letters, digits, - _ ." })),
        reg("team", field("Team", team, { hint: "for accounting" })),
        reg("models", field("Models", models, { hint: "comma-separated canonical model names; empty = all models" })),
        reg("pools", field("Pools", keyPools, { hint: `comma-separated; empty = all pools${poolNames.length ? ` (${poolNames.join(", ")})` : ""}` })),
        reg("expires_at_ms", expiresField),
      ),
      h(
        "fieldset",
        "grid2",
        h("legend", null, "Limits"),
        reg("rpm_limit", field("Requests per minute", rpm, { hint: "fleet-wide, across all proxies; 0 = none" })),
        reg("tpm_limit", field("Tokens per minute", tpm, { hint: "fleet-wide tokens, across all proxies; 0 = none" })),
        reg("max_concurrent", field("Requests at once", concurrent, { hint: "fleet-wide requests in flight at once; 0 = none" })),
        reg("budget_usd", field("Budget (USD)", budget, { hint: "spend per period, from the backends' prices; 0 = none" })),
        reg("budget_period", field("Budget period", period, { hint: "the budget starts afresh each UTC day or calendar month" })),
      ),
      h("div", "dialog-actions", cancel, save),
    );
    const m = modal({ title: existing ? `Edit key ${existing.name}` : "Create key", body: form, wide: true, testid: "key-dialog" });
    cancel.addEventListener("click", () => m.close());
    (existing ? team : name).focus();

    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void (async () => {
        errors.clear();
        save.disabled = true;
        try {
          const ms = list(models.value);
          const ps = list(keyPools.value);
          if (existing) {
            const req: UpdateInit = { id: existing.id, expectedResourceVersion: existing.resourceVersion };
            let changed = false;
            if (name.value.trim() !== existing.name) {
              req.name = name.value.trim();
              changed = true;
            }
            if (team.value.trim() !== existing.team) {
              req.team = team.value.trim();
              changed = true;
            }
            if (!sameList(ms, existing.models)) {
              // An empty list with set_models: every model.
              req.setModels = true;
              req.models = ms;
              changed = true;
            }
            if (!sameList(ps, existing.pools)) {
              req.setPools = true;
              req.pools = ps;
              changed = true;
            }
            if (expires.value !== initialExpiry) {
              req.expiresAtMs = BigInt(fromLocalInput(expires.value, "expires_at_ms"));
              changed = true;
            }
            if (rpm.value.trim() !== initialRpm) {
              req.rpmLimit = rpmValue(rpm, "rpm_limit");
              changed = true;
            }
            if (tpm.value.trim() !== initialTpm) {
              req.tpmLimit = rpmValue(tpm, "tpm_limit", "tokens per minute");
              changed = true;
            }
            if (concurrent.value.trim() !== initialConcurrent) {
              req.maxConcurrent = rpmValue(concurrent, "max_concurrent", "requests");
              changed = true;
            }
            if (budget.value.trim() !== initialBudget) {
              req.budgetUsd = usdValue(budget, "budget_usd");
              changed = true;
            }
            if (period.value !== initialPeriod) {
              req.budgetPeriod = budgetPeriodFromText(period.value);
              changed = true;
            }
            if (!changed) {
              toast("Nothing changed.", "info");
              m.close();
              return;
            }
            const r = await admin.updateKey(req);
            toast(`Saved key ${r.name}`, "ok");
            m.close();
          } else {
            const req: CreateInit = {
              name: name.value.trim(),
              team: team.value.trim(),
              models: ms,
              pools: ps,
              rpmLimit: rpmValue(rpm, "rpm_limit"),
              tpmLimit: rpmValue(tpm, "tpm_limit", "tokens per minute"),
              maxConcurrent: rpmValue(concurrent, "max_concurrent", "requests"),
              budgetUsd: usdValue(budget, "budget_usd"),
              budgetPeriod: budgetPeriodFromText(period.value),
              expiresAtMs: BigInt(fromLocalInput(expires.value, "expires_at_ms")),
            };
            const r = await admin.createKey(req);
            m.close();
            showSecret(
              `New key ${r.key?.name ?? req.name}`,
              "Give this key to the client: it goes in the Authorization header (Bearer) or as the SDK's API key.",
              r.secret,
            );
          }
          await load();
        } catch (e) {
          if (e instanceof LocalError) errors.show(e.path, e.message);
          else {
            const c = callError(e);
            if (c.code === Code.InvalidArgument) errors.show(c.field, c.reason, ["key."]);
            else if (c.code === Code.FailedPrecondition) errors.show(null, `${c.message} — close this form and open it again to see the current values.`);
            else errors.show(null, describe(e));
          }
        } finally {
          save.disabled = !ctx.canWrite;
        }
      })();
    });
  }

  function onLive(d: Dashboard): void {
    // Someone else (sidecarctl, another console) changed the config: reload; the table
    // is drawn again only if the keys changed.
    if (seenVersion !== null && d.configVersion !== seenVersion) void load();
    seenVersion = d.configVersion;
  }

  const unsubscribe = ctx.live.subscribe(onLive);
  // A key can expire while the page is open.
  const ticker = window.setInterval(() => {
    if (rendered) renderTable();
  }, 10_000);
  void load();

  return {
    el,
    dispose() {
      disposed = true;
      unsubscribe();
      window.clearInterval(ticker);
    },
  };
}

export const keysPage: Page = { path: "/keys", title: "Keys", render };
