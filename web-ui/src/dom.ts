// The only way this console builds DOM: createElement, setAttribute and text nodes.
// Nothing here (or anywhere else in the console) assigns innerHTML/outerHTML or calls
// insertAdjacentHTML, so a value from the server is always shown as text, never parsed
// as HTML. Event handlers are attached as functions, never as `on*` attributes.

export type Child = Node | string | number | bigint | null | undefined | false | Child[];

type AttrValue = string | number | boolean | null | undefined;

export interface Props {
  /** Space-separated class names. */
  class?: string;
  /** Attributes; `true` sets an empty attribute, `false`/null/undefined leaves it out. */
  attrs?: Record<string, AttrValue>;
  /** Event listeners. */
  on?: { [K in keyof HTMLElementEventMap]?: (event: HTMLElementEventMap[K]) => void };
}

/** Sets attribute `name` on `el`; refuses event-handler attributes. */
export function setAttr(el: Element, name: string, value: AttrValue): void {
  if (/^on/i.test(name)) throw new Error(`refusing event-handler attribute ${name}`);
  if (value === false || value === null || value === undefined) {
    el.removeAttribute(name);
  } else {
    el.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(parent: Node, child: Child): void {
  if (child === null || child === undefined || child === false) return;
  if (Array.isArray(child)) {
    for (const c of child) append(parent, c);
  } else if (child instanceof Node) {
    parent.appendChild(child);
  } else {
    parent.appendChild(document.createTextNode(String(child)));
  }
}

/** Creates an element with props and children; strings become text nodes. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props?: Props | string | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (typeof props === "string") {
    el.className = props;
  } else if (props) {
    if (props.class) el.className = props.class;
    if (props.attrs) for (const [k, v] of Object.entries(props.attrs)) setAttr(el, k, v);
    if (props.on) {
      for (const [event, fn] of Object.entries(props.on)) {
        if (fn) el.addEventListener(event, fn as EventListener);
      }
    }
  }
  for (const c of children) append(el, c);
  return el;
}

/** Replaces all children of `el`. */
export function mount(el: Element, ...children: Child[]): void {
  const frag = document.createDocumentFragment();
  for (const c of children) append(frag, c);
  el.replaceChildren(frag);
}

/** Sets the text of `el` only when it changed (keeps selections and avoids churn). */
export function setText(el: Element, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}
