// Providers: the backends with their live state (status, bucket fill, cooldown countdown
// from the WatchDashboard stream), and add/edit/delete with a model-mapping editor.
// Validation is the server's: an INVALID_ARGUMENT names the field (`sidecar-field`) and
// the message is shown next to it. The API key is write-only: the form never shows it,
// the table shows the server's masked form.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { admin, callError, Code, describe } from "../api";
import { h, mount, setText } from "../dom";
import { backendApiFromText, backendApiText, backendStatusText } from "../enums";
import { fmtDuration, fmtInt, fmtTime, n, perMillion } from "../format";
import type { BackendPatchSchema, BackendSpecSchema, ModelMappingSchema, Backend, Pool } from "../gen/sidecar/v1/types_pb";
import { BackendApi, BackendSource } from "../gen/sidecar/v1/types_pb";
import type { BackendLive, Dashboard, ValidateBackendResponse } from "../gen/sidecar/v1/admin_pb";
import {
  badge,
  confirmDialog,
  field,
  FieldErrors,
  meter,
  modal,
  pageHeader,
  quoteKey,
  READ_ONLY_HINT,
  table,
  toast,
  writeButton,
  type Field,
  type Page,
  type PageContext,
} from "../ui";

type MappingInit = MessageInitShape<typeof ModelMappingSchema>;
type SpecInit = MessageInitShape<typeof BackendSpecSchema>;
type PatchInit = MessageInitShape<typeof BackendPatchSchema>;

/** A problem found before sending (e.g. "1.5" for an integer field). */
class LocalError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(message);
  }
}

function input(attrs: Record<string, string | boolean | undefined>): HTMLInputElement {
  return h("input", { attrs: { type: "text", autocomplete: "off", spellcheck: "false", ...attrs } });
}

/** An integer field: undefined when empty. */
function intValue(el: HTMLInputElement, path: string): bigint | undefined {
  const v = el.value.trim();
  if (v === "") return undefined;
  if (!/^-?\d+$/.test(v)) throw new LocalError(path, `must be a whole number (got ${JSON.stringify(v)})`);
  return BigInt(v);
}

function u32Value(el: HTMLInputElement, path: string): number {
  return optU32Value(el, path) ?? 0;
}

/** An optional uint32 field: undefined (unset) when empty; 0 is sent for the server to judge. */
function optU32Value(el: HTMLInputElement, path: string): number | undefined {
  const v = intValue(el, path);
  if (v === undefined) return undefined;
  if (v < 0n || v > 4294967295n) throw new LocalError(path, "must be between 0 and 4294967295");
  return Number(v);
}

/**
 * A model's own limits, compactly: "60 RPM", "60 RPM · 90,000 TPM", "90,000 TPM"; with the
 * model's own window when set: "60 RPM / 10 s"; "" when none.
 */
function modelLimitsText(m: { rpmLimit?: number; tpmLimit?: number; windowSeconds?: number }): string {
  const parts: string[] = [];
  if (m.rpmLimit !== undefined) parts.push(`${fmtInt(m.rpmLimit)} RPM`);
  if (m.tpmLimit !== undefined) parts.push(`${fmtInt(m.tpmLimit)} TPM`);
  if (!parts.length) return "";
  const text = parts.join(" · ");
  return m.windowSeconds !== undefined ? `${text} / ${fmtInt(m.windowSeconds)} s` : text;
}

/** A price in USD per million tokens, sent per token; an unchanged field keeps its exact value. */
function costValue(el: HTMLInputElement, path: string, original: number): number {
  const v = el.value.trim();
  if (v === (el.dataset.initial ?? "")) return original;
  if (v === "") return 0;
  const x = Number(v);
  if (!Number.isFinite(x)) throw new LocalError(path, `must be a number, in USD per million tokens (got ${JSON.stringify(v)})`);
  return x / 1e6;
}

function list(v: string): string[] {
  return v
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function sameJson(a: unknown, b: unknown): boolean {
  const norm = (x: unknown): unknown => {
    if (Array.isArray(x)) return x.map(norm);
    if (x && typeof x === "object") {
      return Object.fromEntries(
        Object.entries(x as Record<string, unknown>)
          .filter(([k]) => k !== "$typeName")
          .sort(([k1], [k2]) => (k1 < k2 ? -1 : 1))
          .map(([k, v]) => [k, norm(v)]),
      );
    }
    return x;
  };
  return JSON.stringify(norm(a)) === JSON.stringify(norm(b));
}

/** Which paths each API serves, and how the key is sent (shown under the API select). */
const API_HINT = "OpenAI-compatible: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses. Anthropic: /v1/messages (key sent as x-api-key).";

/** The base URL's placeholder for each API (the form's value of the API select). */
const BASE_URL_PLACEHOLDER: Record<string, string> = {
  openai: "https://api.openai.com/v1",
  anthropic: "https://api.anthropic.com/v1",
};

/** A backend's API as a word; unspecified (a backend stored before APIs) is openai. */
function apiText(b: Backend): string {
  return backendApiText(b.api) || "openai";
}

function validationText(v: ValidateBackendResponse): string {
  if (v.ok) {
    const models = v.models.length ? ` · ${v.models.length} model${v.models.length === 1 ? "" : "s"} listed` : "";
    return `Key accepted: HTTP ${v.httpStatus} in ${v.latencyMs} ms${models}`;
  }
  const status = v.httpStatus ? `HTTP ${v.httpStatus}` : "no HTTP answer";
  return `Key not accepted (${status}): ${v.message || "no message"}`;
}

interface RowRefs {
  backend: Backend;
  status: HTMLElement;
  bucket: HTMLElement;
  cooldown: HTMLElement;
}

function render(ctx: PageContext) {
  let backends: Backend[] = [];
  let pools: Pool[] = [];
  let liveById = new Map<string, BackendLive>();
  let liveAt = 0;
  let seenVersion: bigint | null = null;
  let rows: RowRefs[] = [];
  let disposed = false;

  const box = h("div", null, h("p", "muted", "Loading…"));
  const count = h("span", "muted", "");
  const el = h(
    "div",
    "page page-providers",
    pageHeader("Providers", count, writeButton(ctx, "Add provider", () => openForm(null), "btn primary", { "data-testid": "add-provider" })),
    h(
      "p",
      "muted intro",
      "Each provider backend is one base URL and one API key. Status, bucket fill and cooldowns are live, fleet-wide. Keys are write-only: they are shown masked and never sent back to the browser.",
    ),
    box,
  );

  async function load(): Promise<void> {
    try {
      const [b, p] = await Promise.all([admin.listBackends({}), admin.listPools({})]);
      if (disposed) return;
      backends = b.backends;
      pools = p.pools;
      renderTable();
    } catch (e) {
      if (!disposed) mount(box, h("p", "inline-error", `Could not load the providers: ${describe(e)}`));
    }
  }

  function cooldownMs(b: Backend): number {
    const l = liveById.get(b.id);
    if (l) return Math.max(0, n(l.cooldownRemainingMs) - (Date.now() - liveAt));
    return Math.max(0, n(b.cooldownUntilMs) - Date.now());
  }

  function updateLive(r: RowRefs): void {
    const l = liveById.get(r.backend.id);
    const status = backendStatusText(l?.status ?? r.backend.status);
    if (r.status.dataset.value !== status) {
      r.status.dataset.value = status;
      mount(r.status, badge(status));
    }
    const fill = l ? l.bucketFill : undefined;
    const fillKey = fill === undefined ? "-" : String(Math.round(fill * 100));
    if (r.bucket.dataset.value !== fillKey) {
      r.bucket.dataset.value = fillKey;
      mount(r.bucket, meter(fill));
    }
    const ms = cooldownMs(r.backend);
    const consecutive = l?.consecutive429 ?? r.backend.consecutive429Count;
    const text = ms > 0 ? `${fmtDuration(Math.ceil(ms / 1000))} left` : "—";
    setText(r.cooldown, text);
    r.cooldown.title = ms > 0 ? `${consecutive} consecutive 429${consecutive === 1 ? "" : "s"}; ends ${fmtTime(Date.now() + ms)}` : "";
    r.cooldown.classList.toggle("cooling", ms > 0);
  }

  function renderTable(): void {
    setText(count, `${backends.length} backend${backends.length === 1 ? "" : "s"}`);
    rows = [];
    const t = table<Backend>(
      [
        {
          label: "Name",
          cell: (b) => h("div", "name-cell", h("strong", "backend-name", b.name), b.label ? h("div", { class: "sub backend-label", attrs: { "data-testid": "label" } }, b.label) : null),
        },
        { label: "Status", cell: (b) => h("span", { class: "status-cell", attrs: { "data-testid": "status", "data-backend-id": b.id } }) },
        { label: "Pool", cell: (b) => b.pool },
        { label: "API", cell: (b) => h("span", { class: "api-cell", attrs: { "data-testid": "api" } }, apiText(b)) },
        {
          label: "RPM",
          num: true,
          cell: (b) =>
            h(
              "span",
              { attrs: { "data-testid": "rpm" } },
              fmtInt(b.rpmLimit),
              b.tpmLimit ? h("div", "sub", `${fmtInt(b.tpmLimit)} TPM`) : null,
              // The provider reports a lower limit than configured: the fleet uses it.
              b.learnedRpmLimit
                ? h(
                    "div",
                    { class: "sub limit-learned", attrs: { "data-testid": "limit-learned", title: "The provider's headers report a lower request limit than configured; the fleet uses it. Set the RPM to match." } },
                    `limit learned: ${fmtInt(b.learnedRpmLimit)} RPM`,
                  )
                : null,
            ),
        },
        {
          label: "Models",
          cell: (b) => {
            const names = Object.keys(b.modelMappings).sort();
            if (!names.length) return h("span", "muted", "none");
            return h(
              "ul",
              { class: "chips", attrs: { "data-testid": "models" } },
              names.map((m) => {
                const mm = b.modelMappings[m];
                const native = mm.nativeId;
                const limits = modelLimitsText(mm);
                const title = [native !== m ? `→ ${native}` : "", limits ? `this model's own limit: ${limits} (within the backend's)` : ""].filter((t) => t).join("; ");
                return h(
                  "li",
                  { class: "chip", attrs: { title, "data-model": m } },
                  m,
                  limits ? [" ", h("span", { class: "chip-note", attrs: { "data-testid": "model-limits" } }, limits)] : null,
                );
              }),
            );
          },
        },
        { label: "Bucket", cell: () => h("span", { class: "bucket-cell", attrs: { "data-testid": "bucket" } }) },
        { label: "Cooldown", cell: () => h("span", { class: "cooldown-cell", attrs: { "data-testid": "cooldown" } }, "—") },
        { label: "Key", cell: (b) => h("code", { class: "key", attrs: { "data-testid": "key" } }, b.apiKeyMasked || "—") },
        {
          label: "",
          class: "actions",
          cell: (b) =>
            h(
              "div",
              "row-actions",
              writeButton(ctx, "Test key", () => void testStored(b), "btn small", { "data-testid": "test-key" }),
              h("button", { class: "btn small", attrs: { type: "button", "data-testid": "edit" }, on: { click: () => openForm(b) } }, ctx.canWrite ? "Edit" : "View"),
              writeButton(ctx, "Delete", () => void remove(b), "btn small danger", { "data-testid": "delete" }),
            ),
        },
      ],
      backends,
      {
        empty: ctx.canWrite ? "No providers yet. Add one with “Add provider”." : "No providers yet.",
        testid: "providers-table", stack: true,
        rowAttrs: (b) => ({ "data-backend": b.name }),
      },
    );
    for (const tr of t.querySelectorAll<HTMLTableRowElement>("tbody tr[data-backend]")) {
      const b = backends.find((x) => x.name === tr.dataset.backend);
      if (!b) continue;
      const r: RowRefs = {
        backend: b,
        status: tr.querySelector<HTMLElement>(".status-cell")!,
        bucket: tr.querySelector<HTMLElement>(".bucket-cell")!,
        cooldown: tr.querySelector<HTMLElement>(".cooldown-cell")!,
      };
      updateLive(r);
      rows.push(r);
    }
    mount(box, t);
  }

  function onLive(d: Dashboard): void {
    liveById = new Map(d.backends.map((b) => [b.id, b]));
    liveAt = Date.now();
    if (seenVersion !== null && d.configVersion !== seenVersion) void load();
    seenVersion = d.configVersion;
    for (const r of rows) updateLive(r);
  }

  async function testStored(b: Backend): Promise<void> {
    try {
      const v = await admin.validateBackend({ target: { case: "id", value: b.id } });
      toast(`${b.name}: ${validationText(v)}`, v.ok ? "ok" : "error");
    } catch (e) {
      toast(`${b.name}: ${describe(e)}`, "error");
    }
  }

  async function remove(b: Backend): Promise<void> {
    const yes = await confirmDialog({
      title: "Delete provider",
      message: [`Delete provider “`, h("strong", null, b.name), `”? Proxies stop using it at once. This cannot be undone.`],
      confirm: "Delete",
      danger: true,
    });
    if (!yes) return;
    try {
      const r = await admin.deleteBackend({ id: b.id, expectedResourceVersion: b.resourceVersion });
      toast(`Deleted ${b.name} (config v${r.configVersion})`, "ok");
    } catch (e) {
      toast(`Could not delete ${b.name}: ${describe(e)}`, "error");
    }
    await load();
  }

  function openForm(existing: Backend | null): void {
    const readOnly = !ctx.canWrite;
    const general = h("div", { class: "form-error", attrs: { role: "alert", hidden: true, "data-testid": "form-error" } });
    const errors = new FieldErrors(general);
    const reg = (path: string, f: Field) => {
      errors.register(path, f);
      return f.wrap;
    };

    const name = input({ name: "name", required: true, placeholder: "openai-main" });
    const label = input({ name: "label", placeholder: "optional" });
    const baseUrl = input({ name: "base_url", type: "url", placeholder: BASE_URL_PLACEHOLDER.openai });
    // The API the provider speaks: which routes reach it, and how its key is sent.
    const api = h(
      "select",
      { attrs: { name: "api", "data-testid": "api-select" } },
      h("option", { attrs: { value: "openai" } }, "OpenAI-compatible"),
      h("option", { attrs: { value: "anthropic" } }, "Anthropic"),
    );
    api.value = "openai";
    const apiKey = input({
      name: "api_key",
      type: "password",
      autocomplete: "new-password",
      placeholder: existing ? `unchanged (${existing.apiKeyMasked})` : "sk-…",
    });
    const rpm = input({ name: "rpm_limit", inputmode: "numeric", placeholder: "40" });
    const tpm = input({ name: "tpm_limit", inputmode: "numeric", placeholder: "no limit" });
    const timeout = input({ name: "timeout_seconds", inputmode: "numeric", placeholder: "120" });
    const windowSeconds = input({ name: "window_seconds", inputmode: "numeric", placeholder: "60" });
    const weight = input({ name: "weight", inputmode: "numeric", placeholder: "1" });
    const pool = h("select", { attrs: { name: "pool" } }, pools.map((p) => h("option", { attrs: { value: p.name } }, p.name)));
    const enabled = h("input", { attrs: { type: "checkbox", name: "enabled", checked: existing ? existing.enabled : true } });
    const regions = input({ name: "regions", placeholder: "all regions" });
    const validateOnSave = h("input", { attrs: { type: "checkbox", name: "validate" } });
    const keyResult = h("div", { class: "key-result", attrs: { "data-testid": "key-result", hidden: true, role: "status" } });

    if (existing) {
      name.value = existing.name;
      label.value = existing.label;
      baseUrl.value = existing.baseUrl;
      api.value = apiText(existing);
      rpm.value = String(existing.rpmLimit);
      tpm.value = existing.tpmLimit ? String(existing.tpmLimit) : "";
      timeout.value = String(existing.timeoutSeconds);
      windowSeconds.value = String(existing.windowSeconds || 60);
      weight.value = String(existing.weight);
      pool.value = existing.pool;
      regions.value = existing.regions.join(", ");
    } else {
      pool.value = "primary";
    }
    const showApiPlaceholder = () => (baseUrl.placeholder = BASE_URL_PLACEHOLDER[api.value] ?? BASE_URL_PLACEHOLDER.openai);
    showApiPlaceholder();
    api.addEventListener("change", showApiPlaceholder);

    // Model mappings: canonical name (what clients send) → the provider's model id and prices.
    const mappingRows = h("div", { class: "mapping-rows", attrs: { "data-testid": "mappings" } });
    interface MappingRow {
      el: HTMLElement;
      canonical: Field;
      native: Field;
      costs: Record<"input" | "output" | "cache_read" | "cache_write", Field>;
      contextWindow: Field;
      maxTokens: Field;
      modalities: Field;
      rpmLimit: Field;
      tpmLimit: Field;
      windowSeconds: Field;
      reasoning: HTMLInputElement;
      original: MappingInit | null;
    }
    const mappings: MappingRow[] = [];
    const costKeys = ["input", "output", "cache_read", "cache_write"] as const;
    const costLabels = { input: "Input $/1M tok", output: "Output $/1M tok", cache_read: "Cache read $/1M", cache_write: "Cache write $/1M" };
    const costOf = (m: MappingInit | null, k: (typeof costKeys)[number]): number => {
      const c = m?.cost;
      if (!c) return 0;
      return (k === "input" ? c.input : k === "output" ? c.output : k === "cache_read" ? c.cacheRead : c.cacheWrite) ?? 0;
    };
    function addMapping(canonical: string, m: MappingInit | null): MappingRow {
      const ci = input({ "data-testid": "mapping-canonical", placeholder: "gpt-4o-mini" });
      const ni = input({ "data-testid": "mapping-native", placeholder: "provider's model id" });
      ci.value = canonical;
      ni.value = m?.nativeId ?? "";
      const costs = {} as MappingRow["costs"];
      for (const k of costKeys) {
        const ip = input({ inputmode: "decimal", "data-testid": `mapping-cost-${k}`, placeholder: "0" });
        ip.value = perMillion(costOf(m, k));
        ip.dataset.initial = ip.value;
        costs[k] = field(costLabels[k], ip);
      }
      const cw = input({ inputmode: "numeric", placeholder: "128000" });
      const mt = input({ inputmode: "numeric", placeholder: "65536" });
      const mods = input({ placeholder: "text" });
      cw.value = m?.contextWindow ? String(m.contextWindow) : "";
      mt.value = m?.maxTokens ? String(m.maxTokens) : "";
      mods.value = (m?.inputModalities ?? []).join(", ");
      // The model's own limits on this key: empty = unset (only the backend's apply).
      const rl = input({ inputmode: "numeric", "data-testid": "mapping-rpm-limit", placeholder: "backend's" });
      const tl = input({ inputmode: "numeric", "data-testid": "mapping-tpm-limit", placeholder: "backend's" });
      // The window those limits are counted in: empty = unset (the backend's window).
      const wl = input({ inputmode: "numeric", "data-testid": "mapping-window-seconds", placeholder: "backend's" });
      rl.value = m?.rpmLimit !== undefined ? String(m.rpmLimit) : "";
      tl.value = m?.tpmLimit !== undefined ? String(m.tpmLimit) : "";
      wl.value = m?.windowSeconds !== undefined ? String(m.windowSeconds) : "";
      const reasoning = h("input", { attrs: { type: "checkbox", checked: !!m?.reasoning } });
      const row: MappingRow = {
        el: h("div"),
        canonical: field("Model (canonical)", ci, { hint: "the name clients send" }),
        native: field("Native id", ni, { hint: "the provider's model id" }),
        costs,
        contextWindow: field("Context window", cw),
        maxTokens: field("Max tokens", mt),
        modalities: field("Input modalities", mods, { hint: "text, image, audio, video, file" }),
        rpmLimit: field("RPM limit", rl, { hint: "this model's requests/min on the key; at most the backend's; empty = none" }),
        tpmLimit: field("TPM limit", tl, { hint: "this model's tokens/min on the key; at most the backend's; empty = none" }),
        windowSeconds: field("Limit window (s)", wl, { hint: "the provider counts this model's limits per this many seconds (1–60); empty = the backend's window" }),
        reasoning,
        original: m,
      };
      const removeBtn = h(
        "button",
        {
          class: "btn small icon-only",
          attrs: { type: "button", "aria-label": "Remove this model", title: "Remove this model", "data-testid": "mapping-remove", disabled: readOnly },
          on: {
            click: () => {
              row.el.remove();
              mappings.splice(mappings.indexOf(row), 1);
            },
          },
        },
        "Remove",
      );
      row.el = h(
        "div",
        { class: "mapping-row", attrs: { "data-testid": "mapping-row" } },
        h("div", "mapping-main", row.canonical.wrap, row.native.wrap, costs.input.wrap, costs.output.wrap, removeBtn),
        h(
          "details",
          "mapping-more",
          h("summary", null, "More: cache prices, limits, modalities"),
          h(
            "div",
            "mapping-extra",
            costs.cache_read.wrap,
            costs.cache_write.wrap,
            row.contextWindow.wrap,
            row.maxTokens.wrap,
            row.modalities.wrap,
            row.rpmLimit.wrap,
            row.tpmLimit.wrap,
            row.windowSeconds.wrap,
            h("label", "check", reasoning, " reasoning model"),
          ),
        ),
      );
      mappings.push(row);
      mappingRows.append(row.el);
      return row;
    }
    if (existing) {
      for (const k of Object.keys(existing.modelMappings).sort()) addMapping(k, existing.modelMappings[k]);
    }
    if (!mappings.length) addMapping("", null);
    const addModel = h(
      "button",
      {
        class: "btn small",
        attrs: { type: "button", "data-testid": "add-mapping", disabled: readOnly },
        on: { click: () => addMapping("", null).canonical.control.focus() },
      },
      "Add model",
    );
    const mappingsField: Field = { wrap: h("div", "field"), error: h("div", { class: "field-error", attrs: { role: "alert", hidden: true } }), control: mappingRows };
    mappingsField.wrap.append(mappingRows, mappingsField.error, addModel);
    errors.register("model_mappings", mappingsField);

    // Metadata: free key/value pairs.
    const metaRows = h("div", { class: "meta-rows", attrs: { "data-testid": "metadata" } });
    interface MetaRow {
      el: HTMLElement;
      key: HTMLInputElement;
      value: Field;
    }
    const metas: MetaRow[] = [];
    function addMeta(k: string, v: string): MetaRow {
      const key = input({ placeholder: "key", "aria-label": "Metadata key", "data-testid": "meta-key" });
      const value = input({ placeholder: "value", "aria-label": "Metadata value", "data-testid": "meta-value" });
      key.value = k;
      value.value = v;
      const row: MetaRow = { el: h("div"), key, value: { wrap: h("div", "field"), error: h("div", { class: "field-error", attrs: { role: "alert", hidden: true } }), control: value } };
      row.value.wrap.append(h("div", "meta-pair", key, value), row.value.error);
      const rm = h(
        "button",
        {
          class: "btn small icon-only",
          attrs: { type: "button", "aria-label": "Remove this entry", disabled: readOnly },
          on: {
            click: () => {
              row.el.remove();
              metas.splice(metas.indexOf(row), 1);
            },
          },
        },
        "Remove",
      );
      row.el = h("div", "meta-row", row.value.wrap, rm);
      metas.push(row);
      metaRows.append(row.el);
      return row;
    }
    if (existing) for (const k of Object.keys(existing.metadata).sort()) addMeta(k, existing.metadata[k]);
    const addMetaBtn = h("button", { class: "btn small", attrs: { type: "button", disabled: readOnly }, on: { click: () => addMeta("", "").key.focus() } }, "Add entry");
    const metaField: Field = { wrap: h("div", "field"), error: h("div", { class: "field-error", attrs: { role: "alert", hidden: true } }), control: metaRows };
    metaField.wrap.append(metaRows, metaField.error, addMetaBtn);
    errors.register("metadata", metaField);

    const testBtn = h("button", { class: "btn small", attrs: { type: "button", "data-write": "", "data-testid": "form-test-key" } }, "Test key");
    const save = h("button", { class: "btn primary", attrs: { type: "submit", "data-write": "", "data-testid": "save" } }, existing ? "Save changes" : "Add provider");
    const cancel = h("button", { class: "btn", attrs: { type: "button" } }, readOnly ? "Close" : "Cancel");

    const keyField = field("API key", apiKey, {
      hint: existing ? "Write-only. Leave empty to keep the stored key." : "Write-only: stored encrypted, never shown again.",
    });
    keyField.wrap.append(h("div", "key-tools", testBtn, keyResult));

    const form = h(
      "form",
      { class: "backend-form", attrs: { novalidate: true, "data-testid": "provider-form" } },
      general,
      h(
        "fieldset",
        "grid2",
        h("legend", null, "Provider"),
        reg("name", field("Name", name, { hint: "letters, digits, - _ ." })),
        reg("label", field("Label", label)),
        reg("api", field("API", api, { class: "span2", hint: API_HINT })),
        reg("base_url", field("Base URL", baseUrl, { class: "span2" })),
        reg("api_key", keyField),
        h("label", "check span2", validateOnSave, " Check the key with the provider when saving (refused on 401/403)"),
      ),
      h(
        "fieldset",
        "grid3",
        h("legend", null, "Limits and routing"),
        reg("rpm_limit", field("Requests per minute", rpm)),
        reg("tpm_limit", field("Tokens per minute", tpm, { hint: "empty or 0 = no limit" })),
        reg("window_seconds", field("Provider window (s)", windowSeconds, { hint: "the provider allows RPM × s / 60 per window; 60 unless it counts per 10 s or per second" })),
        reg("timeout_seconds", field("Timeout (s)", timeout)),
        reg("pool", field("Pool", pool)),
        reg("weight", field("Weight", weight, { hint: "within the pool" })),
        reg("regions", field("Regions", regions, { hint: "comma-separated; empty = all" })),
        reg("enabled", field("Enabled", enabled)),
      ),
      h("fieldset", null, h("legend", null, "Models"), h("p", "hint", "Prices are in USD per million tokens."), mappingsField.wrap),
      h("fieldset", null, h("legend", null, "Metadata"), metaField.wrap),
      h("div", "dialog-actions", cancel, save),
    );
    if (readOnly) {
      for (const c of form.querySelectorAll<HTMLInputElement | HTMLSelectElement | HTMLButtonElement>("input,select,button")) {
        if (c === cancel) continue;
        c.disabled = true;
        if (c.hasAttribute("data-write")) c.title = READ_ONLY_HINT;
      }
    }

    const m = modal({
      title: existing ? (readOnly ? `Provider ${existing.name} (read-only)` : `Edit ${existing.name}`) : "Add provider",
      body: form,
      wide: true,
      testid: "provider-dialog",
    });
    cancel.addEventListener("click", () => m.close());
    // The key must not linger in the page once the dialog is gone.
    m.dialog.addEventListener("close", () => {
      apiKey.value = "";
    });
    (existing ? label : name).focus();

    function registerDynamic(): void {
      errors.unregisterPrefix("model_mappings[");
      errors.unregisterPrefix("metadata[");
      for (const r of mappings) {
        const at = `model_mappings[${quoteKey(r.canonical.control instanceof HTMLInputElement ? r.canonical.control.value.trim() : "")}]`;
        errors.register(at, r.canonical);
        errors.register(`${at}.native_id`, r.native);
        for (const k of costKeys) errors.register(`${at}.cost.${k}`, r.costs[k]);
        errors.register(`${at}.context_window`, r.contextWindow);
        errors.register(`${at}.max_tokens`, r.maxTokens);
        errors.register(`${at}.input_modalities`, r.modalities);
        errors.register(`${at}.rpm_limit`, r.rpmLimit);
        errors.register(`${at}.tpm_limit`, r.tpmLimit);
        errors.register(`${at}.window_seconds`, r.windowSeconds);
      }
      for (const r of metas) errors.register(`metadata[${quoteKey(r.key.value)}]`, r.value);
    }

    function collectMappings(): Record<string, MappingInit> {
      const out: Record<string, MappingInit> = {};
      for (const r of mappings) {
        const ci = r.canonical.control as HTMLInputElement;
        const ni = r.native.control as HTMLInputElement;
        const canonical = ci.value.trim();
        const blank =
          !canonical &&
          !ni.value.trim() &&
          costKeys.every((k) => !(r.costs[k].control as HTMLInputElement).value.trim()) &&
          !(r.rpmLimit.control as HTMLInputElement).value.trim() &&
          !(r.tpmLimit.control as HTMLInputElement).value.trim() &&
          !(r.windowSeconds.control as HTMLInputElement).value.trim();
        if (blank) continue;
        const at = `model_mappings[${quoteKey(canonical)}]`;
        if (!canonical) throw new LocalError(`model_mappings[""]`, "enter the model name clients send");
        if (canonical in out) throw new LocalError(at, `model ${canonical} is listed twice`);
        const cost: Record<string, number> = {};
        for (const k of costKeys) cost[k] = costValue(r.costs[k].control as HTMLInputElement, `${at}.cost.${k}`, costOf(r.original, k));
        out[canonical] = {
          nativeId: ni.value,
          cost: { input: cost.input, output: cost.output, cacheRead: cost.cache_read, cacheWrite: cost.cache_write },
          contextWindow: u32Value(r.contextWindow.control as HTMLInputElement, `${at}.context_window`),
          maxTokens: u32Value(r.maxTokens.control as HTMLInputElement, `${at}.max_tokens`),
          reasoning: r.reasoning.checked,
          inputModalities: list((r.modalities.control as HTMLInputElement).value),
          rpmLimit: optU32Value(r.rpmLimit.control as HTMLInputElement, `${at}.rpm_limit`),
          tpmLimit: optU32Value(r.tpmLimit.control as HTMLInputElement, `${at}.tpm_limit`),
          windowSeconds: optU32Value(r.windowSeconds.control as HTMLInputElement, `${at}.window_seconds`),
        };
      }
      return out;
    }

    function collectMetadata(): Record<string, string> {
      const out: Record<string, string> = {};
      for (const r of metas) {
        const k = r.key.value;
        if (!k && !(r.value.control as HTMLInputElement).value) continue;
        if (k in out) throw new LocalError(`metadata[${quoteKey(k)}]`, `key ${k} is listed twice`);
        out[k] = (r.value.control as HTMLInputElement).value;
      }
      return out;
    }

    /** Existing mappings in the form the editor would produce, to detect changes. */
    function normalisedExisting(b: Backend): Record<string, MappingInit> {
      const out: Record<string, MappingInit> = {};
      for (const [k, v] of Object.entries(b.modelMappings)) {
        out[k] = {
          nativeId: v.nativeId,
          cost: { input: v.cost?.input ?? 0, output: v.cost?.output ?? 0, cacheRead: v.cost?.cacheRead ?? 0, cacheWrite: v.cost?.cacheWrite ?? 0 },
          contextWindow: v.contextWindow,
          maxTokens: v.maxTokens,
          reasoning: v.reasoning,
          inputModalities: [...v.inputModalities],
          rpmLimit: v.rpmLimit,
          tpmLimit: v.tpmLimit,
          windowSeconds: v.windowSeconds,
        };
      }
      return out;
    }

    testBtn.addEventListener("click", () => {
      void (async () => {
        errors.clear();
        keyResult.hidden = true;
        let target: { case: "id"; value: string } | { case: "candidate"; value: { baseUrl: string; apiKey: string; api: BackendApi } };
        if (apiKey.value) target = { case: "candidate", value: { baseUrl: baseUrl.value.trim(), apiKey: apiKey.value, api: backendApiFromText(api.value) } };
        else if (existing) target = { case: "id", value: existing.id };
        else {
          errors.show("api_key", "enter the key to test it");
          return;
        }
        testBtn.disabled = true;
        setText(keyResult, "Testing…");
        keyResult.className = "key-result";
        keyResult.hidden = false;
        try {
          const v = await admin.validateBackend({ target });
          setText(keyResult, target.case === "id" ? `${validationText(v)} (stored URL and key)` : validationText(v));
          keyResult.classList.add(v.ok ? "ok" : "bad");
        } catch (e) {
          keyResult.hidden = true;
          const c = callError(e);
          if (c.code === Code.InvalidArgument) errors.show(c.field, c.reason, ["candidate."]);
          else errors.show(null, describe(e));
        } finally {
          testBtn.disabled = readOnly;
        }
      })();
    });

    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (readOnly) return;
      void (async () => {
        errors.clear();
        registerDynamic();
        save.disabled = true;
        try {
          if (existing) {
            const patch: PatchInit = {};
            if (name.value.trim() !== existing.name) patch.name = name.value.trim();
            if (label.value !== existing.label) patch.label = label.value;
            if (baseUrl.value.trim() !== existing.baseUrl) patch.baseUrl = baseUrl.value.trim();
            // Unspecified in a patch is "unchanged": sent only when the select moved.
            if (api.value !== apiText(existing)) patch.api = backendApiFromText(api.value);
            if (apiKey.value) patch.apiKey = apiKey.value;
            const r = intValue(rpm, "rpm_limit");
            if (r !== undefined && r !== BigInt(existing.rpmLimit)) patch.rpmLimit = r;
            else if (r === undefined) throw new LocalError("rpm_limit", "must not be empty");
            const t = intValue(tpm, "tpm_limit") ?? 0n;
            if (t !== BigInt(existing.tpmLimit)) patch.tpmLimit = t;
            const to = intValue(timeout, "timeout_seconds") ?? 0n;
            if (to !== BigInt(existing.timeoutSeconds)) patch.timeoutSeconds = to;
            const ws = intValue(windowSeconds, "window_seconds") ?? 0n;
            if ((ws === 0n ? 60n : ws) !== BigInt(existing.windowSeconds || 60)) patch.windowSeconds = ws;
            const w = intValue(weight, "weight");
            if (w !== undefined && w !== BigInt(existing.weight)) patch.weight = w;
            else if (w === undefined) throw new LocalError("weight", "must not be empty");
            if (pool.value !== existing.pool) patch.pool = pool.value;
            if (enabled.checked !== existing.enabled) patch.enabled = enabled.checked;
            const mm = collectMappings();
            if (!sameJson(mm, normalisedExisting(existing))) patch.modelMappings = { entries: mm };
            const rg = list(regions.value);
            if (!sameJson(rg, existing.regions)) patch.regions = { values: rg };
            const md = collectMetadata();
            if (!sameJson(md, existing.metadata)) patch.metadata = { entries: md };
            if (Object.keys(patch).length === 0) {
              toast("Nothing changed.", "info");
              m.close();
              return;
            }
            const res = await admin.updateBackend({
              id: existing.id,
              patch,
              expectedResourceVersion: existing.resourceVersion,
              validate: validateOnSave.checked,
            });
            toast(`Saved ${res.backend?.name ?? existing.name} (config v${res.configVersion})`, "ok");
          } else {
            const spec: SpecInit = {
              name: name.value.trim(),
              label: label.value,
              baseUrl: baseUrl.value.trim(),
              api: backendApiFromText(api.value),
              apiKey: apiKey.value,
              timeoutSeconds: intValue(timeout, "timeout_seconds") ?? 0n,
              rpmLimit: intValue(rpm, "rpm_limit"),
              tpmLimit: intValue(tpm, "tpm_limit") ?? 0n,
              windowSeconds: intValue(windowSeconds, "window_seconds") ?? 0n,
              pool: pool.value,
              enabled: enabled.checked,
              weight: intValue(weight, "weight"),
              modelMappings: collectMappings(),
              regions: list(regions.value),
              metadata: collectMetadata(),
              source: BackendSource.CONSOLE,
            };
            const res = await admin.createBackend({ backend: spec, validate: validateOnSave.checked });
            toast(`Added ${res.backend?.name ?? spec.name} (config v${res.configVersion})`, "ok");
          }
          apiKey.value = "";
          m.close();
          await load();
        } catch (e) {
          if (e instanceof LocalError) {
            errors.show(e.path, e.message);
          } else {
            const c = callError(e);
            if (c.code === Code.InvalidArgument) errors.show(c.field, c.reason, ["backend.", "patch."]);
            else if (c.code === Code.FailedPrecondition) errors.show(null, `${c.message} — close this form and open it again to see the current values.`);
            else errors.show(null, describe(e));
          }
        } finally {
          save.disabled = false;
        }
      })();
    });
  }

  const unsubscribe = ctx.live.subscribe(onLive);
  const ticker = window.setInterval(() => {
    for (const r of rows) updateLive(r);
  }, 250);
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

export const providersPage: Page = { path: "/providers", title: "Providers", render };
