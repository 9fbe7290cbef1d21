// Shared widgets: status badges, tables, toasts, dialogs, form fields with server-named
// errors, buttons that only admins may use.

import { h, mount, setAttr, type Child } from "./dom";
import type { Role } from "./api";
import type { LiveFeed } from "./live";

export interface PageContext {
  role: Role;
  canWrite: boolean;
  live: LiveFeed;
}

export interface PageView {
  el: HTMLElement;
  dispose?: () => void;
}

export interface Page {
  path: string;
  title: string;
  render(ctx: PageContext): PageView;
}

/** Runs `load` now and every `ms` after; returns what stops it. */
export function poll(load: () => Promise<void>, ms: number): () => void {
  void load();
  const timer = window.setInterval(() => void load(), ms);
  return () => window.clearInterval(timer);
}

export const READ_ONLY_HINT = "Read-only: sign in with an admin token to change this";

/** A status badge: healthy, cooling, error, disabled, or anything else. */
export function badge(status: string, text = status): HTMLElement {
  const known = ["healthy", "cooling", "error", "disabled", "connected", "disconnected", "active", "ended"];
  const cls = known.includes(status) ? status : "other";
  return h("span", { class: `badge badge-${cls}`, attrs: { "data-status": status } }, text);
}

export interface Column<T> {
  label: string;
  cell: (row: T) => Child;
  /** Right-aligned numbers. */
  num?: boolean;
  class?: string;
}

/**
 * A line under a table row that belongs to it (a backend's model, say): its cells by
 * column label, under the row's own; the other columns stay empty.
 */
export interface SubRow {
  cells: Partial<Record<string, Child>>;
  /** Where a cell's label on narrow screens differs from its column's, by column label. */
  labels?: Partial<Record<string, string>>;
  attrs?: Record<string, string>;
}

/** A table in a horizontally scrolling wrapper (narrow screens). */
export function table<T>(
  columns: Column<T>[],
  rows: T[],
  opts: {
    empty?: string;
    rowAttrs?: (row: T) => Record<string, string>;
    testid?: string;
    /** On narrow screens, show each row as a card of label/value lines. */
    stack?: boolean;
    /** Sub-rows right under each row (none leaves the row as it is). */
    subRows?: (row: T) => SubRow[];
  } = {},
): HTMLElement {
  const thead = h(
    "thead",
    null,
    h(
      "tr",
      null,
      columns.map((c) => h("th", { class: [c.num ? "num" : "", c.class ?? ""].join(" ").trim(), attrs: { scope: "col" } }, c.label)),
    ),
  );
  const tbody = h("tbody");
  if (rows.length === 0) {
    tbody.append(h("tr", "empty", h("td", { attrs: { colspan: columns.length } }, opts.empty ?? "Nothing here yet.")));
  }
  const cellClass = (c: Column<T>) => [c.num ? "num" : "", c.class ?? ""].join(" ").trim();
  for (const row of rows) {
    const tr = h(
      "tr",
      { attrs: opts.rowAttrs?.(row) },
      columns.map((c) => h("td", { class: cellClass(c), attrs: { "data-label": c.label } }, c.cell(row))),
    );
    tbody.append(tr);
    for (const sub of opts.subRows?.(row) ?? []) {
      tbody.append(
        h(
          "tr",
          { class: "sub-row", attrs: sub.attrs },
          columns.map((c) => h("td", { class: cellClass(c), attrs: { "data-label": sub.labels?.[c.label] ?? c.label } }, sub.cells[c.label] ?? null)),
        ),
      );
    }
  }
  return h("div", { class: opts.stack ? "table-wrap stack" : "table-wrap", attrs: { "data-testid": opts.testid } }, h("table", null, thead, tbody));
}

/** A fill bar 0..1 with its percentage. */
export function meter(fill: number | undefined): HTMLElement {
  if (fill === undefined || Number.isNaN(fill)) return h("span", "muted", "—");
  const pct = Math.round(Math.max(0, Math.min(1, fill)) * 100);
  const bar = h("span", "meter-fill");
  bar.style.width = `${pct}%`;
  if (pct < 20) bar.classList.add("low");
  return h(
    "span",
    { class: "meter", attrs: { role: "meter", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct, title: `${pct}% of the bucket left` } },
    h("span", "meter-track", bar),
    h("span", "meter-text", `${pct}%`),
  );
}

let toastBox: HTMLElement | null = null;

export function setToastBox(el: HTMLElement): void {
  toastBox = el;
}

/** A short message in the corner; errors stay longer. */
export function toast(message: string, kind: "ok" | "error" | "info" = "info"): void {
  if (!toastBox) return;
  const el = h("div", { class: `toast toast-${kind}`, attrs: { role: kind === "error" ? "alert" : "status" } }, message);
  const close = h("button", { class: "toast-close", attrs: { type: "button", "aria-label": "Dismiss" }, on: { click: () => el.remove() } }, "×");
  el.append(close);
  toastBox.append(el);
  window.setTimeout(() => el.remove(), kind === "error" ? 10_000 : 4000);
}

/** A button only admins may use: disabled (with a hint) for viewers. */
export function writeButton(ctx: PageContext, label: string, onClick: () => void, cls = "btn", attrs: Record<string, string> = {}): HTMLButtonElement {
  const b = h("button", { class: cls, attrs: { type: "button", "data-write": "", ...attrs }, on: { click: onClick } }, label);
  if (!ctx.canWrite) {
    b.disabled = true;
    b.title = READ_ONLY_HINT;
  }
  return b;
}

/** A modal dialog; resolves with the button's value when closed. */
export function modal(opts: { title: string; body: Child; wide?: boolean; testid?: string }): { dialog: HTMLDialogElement; body: HTMLElement; close: () => void } {
  const body = h("div", "dialog-body", opts.body);
  const close = () => {
    dialog.close();
  };
  const dialog = h(
    "dialog",
    { class: opts.wide ? "dialog wide" : "dialog", attrs: { "aria-label": opts.title, "data-testid": opts.testid } },
    h("header", "dialog-head", h("h2", null, opts.title), h("button", { class: "icon-btn", attrs: { type: "button", "aria-label": "Close" }, on: { click: close } }, "×")),
    body,
  );
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, body, close };
}

/** Asks before something irreversible. */
export function confirmDialog(opts: { title: string; message: Child; confirm: string; danger?: boolean }): Promise<boolean> {
  return new Promise((resolve) => {
    let answer = false;
    const yes = h("button", { class: opts.danger ? "btn danger" : "btn primary", attrs: { type: "button", "data-testid": "confirm-yes" } }, opts.confirm);
    const no = h("button", { class: "btn", attrs: { type: "button", "data-testid": "confirm-no" } }, "Cancel");
    const m = modal({ title: opts.title, body: [h("p", null, opts.message), h("div", "dialog-actions", no, yes)], testid: "confirm" });
    yes.addEventListener("click", () => {
      answer = true;
      m.close();
    });
    no.addEventListener("click", () => m.close());
    m.dialog.addEventListener("close", () => resolve(answer));
    no.focus();
  });
}

/** A labelled form field with a slot for the error the server names. */
export interface Field {
  wrap: HTMLElement;
  error: HTMLElement;
  control: HTMLElement;
}

export function field(label: string, control: HTMLElement, opts: { hint?: string; path?: string; class?: string } = {}): Field {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const error = h("div", { class: "field-error", attrs: { role: "alert", hidden: true } });
  const wrap = h(
    "div",
    { class: `field ${opts.class ?? ""}`.trim(), attrs: { "data-field": opts.path } },
    h("label", { attrs: { for: id } }, label),
    control,
    opts.hint ? h("div", "hint", opts.hint) : null,
    error,
  );
  return { wrap, error, control };
}

/**
 * Maps field paths (without the `backend.`/`patch.` prefix) to fields and shows an error
 * next to the most specific one that exists: `model_mappings["x"].cost.input`, then
 * `model_mappings["x"]`, then `model_mappings`.
 */
export class FieldErrors {
  private fields = new Map<string, Field>();
  private shown: Field[] = [];

  constructor(private readonly general: HTMLElement) {}

  register(path: string, f: Field): void {
    this.fields.set(path, f);
    f.wrap.setAttribute("data-field", path);
  }

  unregisterPrefix(prefix: string): void {
    for (const k of [...this.fields.keys()]) if (k.startsWith(prefix)) this.fields.delete(k);
  }

  clear(): void {
    for (const f of this.shown) {
      f.error.hidden = true;
      f.error.textContent = "";
      f.wrap.classList.remove("invalid");
      for (const c of f.wrap.querySelectorAll("input,select,textarea")) setAttr(c, "aria-invalid", null);
    }
    this.shown = [];
    this.general.hidden = true;
    this.general.textContent = "";
  }

  /** Shows `reason` at `path` (or in the general slot); returns the field used. */
  show(path: string | null, reason: string, prefixes: string[] = []): Field | null {
    let p = path ?? "";
    for (const pre of prefixes) if (p.startsWith(pre)) p = p.slice(pre.length);
    for (const candidate of pathPrefixes(p)) {
      const f = this.fields.get(candidate);
      if (f) {
        f.error.textContent = reason;
        f.error.hidden = false;
        f.wrap.classList.add("invalid");
        for (const c of f.wrap.querySelectorAll("input,select,textarea")) setAttr(c, "aria-invalid", "true");
        this.shown.push(f);
        f.wrap.closest("details")?.setAttribute("open", "");
        f.wrap.scrollIntoView({ block: "nearest" });
        const input = f.wrap.querySelector<HTMLElement>("input,select,textarea");
        input?.focus({ preventScroll: true });
        return f;
      }
    }
    this.general.textContent = path ? `${path}: ${reason}` : reason;
    this.general.hidden = false;
    return null;
  }
}

/**
 * A path and its parents, most specific first:
 * `a["k.1"].b[2]` → `a["k.1"].b[2]`, `a["k.1"].b`, `a["k.1"]`, `a`.
 */
export function pathPrefixes(path: string): string[] {
  const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(path);
  if (!m) return path ? [path] : [];
  const parts = [m[0]];
  const seg = /\.[A-Za-z_][A-Za-z0-9_]*|\[(?:"(?:[^"\\]|\\.)*"|\d+)\]/y;
  seg.lastIndex = m[0].length;
  let s: RegExpExecArray | null;
  while (seg.lastIndex < path.length && (s = seg.exec(path))) parts.push(s[0]);
  const out: string[] = [];
  for (let i = parts.length; i > 0; i--) out.push(parts.slice(0, i).join(""));
  if (out[0] !== path) out.unshift(path);
  return out;
}

/** Rust's Debug form of a string key, as field paths quote map keys: `"gpt-4o"`. */
export function quoteKey(key: string): string {
  return `"${key.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

export function section(title: string, ...children: Child[]): HTMLElement {
  return h("section", "panel", h("h2", null, title), ...children);
}

export function pageHeader(title: string, ...actions: Child[]): HTMLElement {
  return h("div", "page-head", h("h1", null, title), h("div", "page-actions", ...actions));
}

export function placeholder(el: HTMLElement, text: string): void {
  mount(el, h("p", "muted", text));
}
