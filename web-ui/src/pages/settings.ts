// Settings: the typed system settings (pushed to every proxy), as a form. Only changed
// fields are sent (SettingsPatch) with the resource version the form was loaded at.
// Below the form: the routing pools (spill policy per pool) and the API tokens.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { admin, callError, Code, describe } from "../api";
import { h, mount, setText } from "../dom";
import type { Settings, SettingsPatchSchema } from "../gen/sidecar/v1/types_pb";
import { poolsSection } from "./pools";
import { tokensSection } from "./tokens";
import { field, FieldErrors, READ_ONLY_HINT, toast, type Field, type Page, type PageContext, pageHeader } from "../ui";

type PatchInit = MessageInitShape<typeof SettingsPatchSchema>;
type Kind = "int" | "float" | "bool";

interface Def {
  key: keyof Settings & keyof PatchInit;
  label: string;
  kind: Kind;
  hint: string;
}

/** The proto field name of a setting, as the server names it in errors. */
function protoName(d: Def): string {
  return String(d.key).replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

const GROUPS: { title: string; defs: Def[] }[] = [
  {
    title: "Cooldowns",
    defs: [
      { key: "cooldownBaseSeconds", label: "Base cooldown (s)", kind: "int", hint: "after the first consecutive 429; doubles with each further one" },
      { key: "cooldownMaxSeconds", label: "Longest cooldown (s)", kind: "int", hint: "cap of the doubling; at least the base" },
      { key: "nearRecoveryWaitSeconds", label: "Wait for recovery (s)", kind: "int", hint: "wait this long for a cooling backend before the emergency channel" },
      { key: "emergencyFraction", label: "Emergency reserve", kind: "float", hint: "fraction of a backend's RPM kept for emergencies (0–1)" },
      { key: "adaptiveRetreat", label: "Adaptive retreat", kind: "bool", hint: "lower a backend's limit while it answers many 429s" },
    ],
  },
  {
    title: "Queue and limits",
    defs: [
      { key: "queueCapacity", label: "Queue capacity", kind: "int", hint: "requests that may wait for a token, over all priorities" },
      { key: "queueTimeoutSeconds", label: "Queue timeout (s)", kind: "int", hint: "longest wait for urgent, high and normal requests" },
      { key: "lowPriorityTimeoutSeconds", label: "Low-priority timeout (s)", kind: "int", hint: "longest wait for low-priority requests" },
      { key: "bucketBurst", label: "Bucket burst", kind: "int", hint: "requests a backend may take at once" },
    ],
  },
  {
    title: "Health",
    defs: [
      { key: "failureThreshold", label: "Failure threshold", kind: "int", hint: "consecutive 5xx/timeouts/connect errors that mark a backend error" },
      { key: "errorCooldownSeconds", label: "Error cooldown (s)", kind: "int", hint: "how long a backend stays in error" },
      { key: "probeIntervalSeconds", label: "Probe interval (s)", kind: "int", hint: "active GET /models checks; 0 = off" },
      { key: "probeTimeoutSeconds", label: "Probe timeout (s)", kind: "int", hint: "" },
    ],
  },
  {
    title: "Retention and backups",
    defs: [
      { key: "retentionMinuteHours", label: "Per-minute usage (hours)", kind: "int", hint: "default 48" },
      { key: "retentionHourDays", label: "Hourly usage (days)", kind: "int", hint: "default 90; also the cooldown history" },
      { key: "retentionDayDays", label: "Daily usage (days)", kind: "int", hint: "default 730" },
      { key: "backupIntervalHours", label: "Backup every (hours)", kind: "int", hint: "0 = off" },
      { key: "backupRetentionDays", label: "Keep backups (days)", kind: "int", hint: "the newest is always kept" },
    ],
  },
];

class LocalError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(message);
  }
}

function render(ctx: PageContext) {
  const box = h("div", null, h("p", "muted", "Loading…"));
  const version = h("span", { class: "muted", attrs: { "data-testid": "settings-version" } }, "");
  const el = h(
    "div",
    "page page-settings",
    pageHeader("Settings", version, h("button", { class: "btn small", attrs: { type: "button" }, on: { click: () => void reload() } }, "Reload")),
    h("p", "muted intro", "System settings apply to every proxy within moments of saving. Only the fields you change are sent."),
    box,
  );
  const pools = poolsSection(ctx);
  const tokens = tokensSection(ctx);
  el.append(pools.el, tokens.el);
  let disposed = false;

  function reload(): void {
    void load();
    void pools.load();
  }

  async function load(): Promise<void> {
    try {
      const r = await admin.getSettings({});
      if (disposed || !r.settings) return;
      setText(version, `settings v${r.resourceVersion} · config v${r.configVersion}`);
      build(r.settings, r.resourceVersion);
    } catch (e) {
      if (!disposed) mount(box, h("p", "inline-error", `Could not load the settings: ${describe(e)}`));
    }
  }

  function build(s: Settings, resourceVersion: bigint): void {
    const general = h("div", { class: "form-error", attrs: { role: "alert", hidden: true, "data-testid": "form-error" } });
    const errors = new FieldErrors(general);
    const inputs = new Map<Def, HTMLInputElement>();
    const fieldsets = GROUPS.map((g) =>
      h(
        "fieldset",
        "grid3",
        h("legend", null, g.title),
        g.defs.map((d) => {
          const value = s[d.key];
          const name = protoName(d);
          const input =
            d.kind === "bool"
              ? h("input", { attrs: { type: "checkbox", name, checked: Boolean(value) } })
              : h("input", { attrs: { type: "text", inputmode: d.kind === "int" ? "numeric" : "decimal", name, value: String(value), autocomplete: "off" } });
          if (!ctx.canWrite) {
            input.disabled = true;
            input.title = READ_ONLY_HINT;
          }
          inputs.set(d, input);
          const f: Field = field(d.label, input, { hint: d.hint || undefined, path: name });
          errors.register(name, f);
          return f.wrap;
        }),
      ),
    );
    const save = h("button", { class: "btn primary", attrs: { type: "submit", "data-write": "", "data-testid": "save-settings" } }, "Save settings");
    const reset = h("button", { class: "btn", attrs: { type: "button", "data-write": "" }, on: { click: () => build(s, resourceVersion) } }, "Reset");
    if (!ctx.canWrite) {
      for (const b of [save, reset]) {
        b.disabled = true;
        b.title = READ_ONLY_HINT;
      }
    }
    const form = h("form", { class: "settings-form", attrs: { novalidate: true, "data-testid": "settings-form" } }, general, fieldsets, h("div", "form-actions", reset, save));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void (async () => {
        errors.clear();
        const patch: Record<string, unknown> = {};
        try {
          for (const [d, input] of inputs) {
            const old = s[d.key];
            if (d.kind === "bool") {
              if (input.checked !== old) patch[d.key] = input.checked;
            } else if (d.kind === "int") {
              const v = input.value.trim();
              if (!/^-?\d+$/.test(v)) throw new LocalError(protoName(d), `must be a whole number (got ${JSON.stringify(v)})`);
              if (BigInt(v) !== BigInt(old as number)) patch[d.key] = BigInt(v);
            } else {
              const v = Number(input.value.trim());
              if (input.value.trim() === "" || !Number.isFinite(v)) throw new LocalError(protoName(d), `must be a number (got ${JSON.stringify(input.value)})`);
              if (v !== old) patch[d.key] = v;
            }
          }
          if (Object.keys(patch).length === 0) {
            toast("Nothing changed.", "info");
            return;
          }
          save.disabled = true;
          const r = await admin.updateSettings({ patch: patch as PatchInit, expectedResourceVersion: resourceVersion });
          toast(`Settings saved (config v${r.configVersion})`, "ok");
          if (r.settings) {
            setText(version, `settings v${r.resourceVersion} · config v${r.configVersion}`);
            build(r.settings, r.resourceVersion);
          }
        } catch (e) {
          if (e instanceof LocalError) errors.show(e.path, e.message);
          else {
            const c = callError(e);
            if (c.code === Code.InvalidArgument) errors.show(c.field, c.reason, ["patch.", "settings."]);
            else if (c.code === Code.FailedPrecondition) errors.show(null, `${c.message} — press Reload to see the current values.`);
            else errors.show(null, describe(e));
          }
        } finally {
          save.disabled = !ctx.canWrite;
        }
      })();
    });
    mount(box, form);
  }

  void load();
  return {
    el,
    dispose() {
      disposed = true;
      pools.dispose();
      tokens.dispose();
    },
  };
}

export const settingsPage: Page = { path: "/settings", title: "Settings", render };
