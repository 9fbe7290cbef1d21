// API tokens (on the Settings page): the list (never the secrets), and for admins: create
// a token (its secret is shown once) and revoke one.

import { admin, describe } from "../api";
import { h, mount } from "../dom";
import { roleFromText, roleText } from "../enums";
import { fmtTime } from "../format";
import { Role, type Token } from "../gen/sidecar/v1/types_pb";
import { confirmDialog, modal, section, table, toast, writeButton, type PageContext } from "../ui";

export function tokensSection(ctx: PageContext): { el: HTMLElement; dispose: () => void } {
  let disposed = false;
  const box = h("div", null, h("p", "muted", "Loading…"));
  const role = h(
    "select",
    { attrs: { id: "token-role", "data-testid": "token-role", disabled: !ctx.canWrite } },
    h("option", { attrs: { value: "viewer" } }, "viewer (read only)"),
    h("option", { attrs: { value: "admin" } }, "admin (read and write)"),
    h("option", { attrs: { value: "node" } }, "node (for a proxy)"),
  );
  const name = h("input", {
    attrs: { type: "text", id: "token-name", placeholder: "who or what uses it", autocomplete: "off", "data-testid": "token-name", disabled: !ctx.canWrite },
  });
  // Node tokens: bound to one node id (and region), as `sidecarctl node-token create` does.
  const nodeId = h("input", {
    attrs: { type: "text", id: "token-node", placeholder: "the proxy's SIDECAR_NODE_ID", autocomplete: "off", "data-testid": "token-node", disabled: !ctx.canWrite },
  });
  const region = h("input", {
    attrs: { type: "text", id: "token-region", placeholder: "any", autocomplete: "off", "data-testid": "token-region", disabled: !ctx.canWrite },
  });
  const nodeFields = [
    h("div", "filter", h("label", { attrs: { for: "token-node" } }, "Node id"), nodeId),
    h("div", "filter", h("label", { attrs: { for: "token-region" } }, "Region"), region),
  ];
  const showNodeFields = () => {
    for (const f of nodeFields) f.hidden = role.value !== "node";
  };
  role.addEventListener("change", showNodeFields);
  showNodeFields();
  const create = writeButton(ctx, "Create token", () => void createToken(), "btn primary", { "data-testid": "create-token" });
  const el = section(
    "API tokens",
    h(
      "p",
      "muted",
      "Admin tokens read and write, viewer tokens only read, node tokens are for proxies: give each proxy its own, bound to its node id, so one leaked credential cannot act as another node. A second token for the same node id rotates it: revoke the old one once the proxy uses the new one. A token's secret is shown once, when it is created.",
    ),
    h(
      "div",
      "filters token-create",
      h("div", "filter", h("label", { attrs: { for: "token-role" } }, "Role"), role),
      h("div", "filter grow", h("label", { attrs: { for: "token-name" } }, "Name"), name),
      ...nodeFields,
      h("div", "filter end", create),
    ),
    box,
  );

  async function load(): Promise<void> {
    try {
      const r = await admin.listTokens({});
      if (disposed) return;
      mount(
        box,
        table<Token>(
          [
            { label: "Name", cell: (t) => t.name || h("span", "muted", "(unnamed)") },
            { label: "Role", cell: (t) => roleText(t.role) },
            {
              label: "Node",
              cell: (t) =>
                t.role !== Role.NODE
                  ? h("span", "muted", "—")
                  : t.nodeId
                    ? h("code", { attrs: { "data-testid": "token-node-id" } }, t.region ? `${t.nodeId} (${t.region})` : t.nodeId)
                    : h("span", { class: "muted", attrs: { "data-testid": "token-node-id" } }, "shared"),
            },
            { label: "Last used", cell: (t) => (t.lastUsedMs ? fmtTime(t.lastUsedMs) : h("span", "muted", "never")) },
            { label: "Id", cell: (t) => h("code", null, t.id) },
            { label: "Created", cell: (t) => fmtTime(t.createdAtMs) },
            { label: "By", cell: (t) => h("code", null, t.createdBy || "—") },
            {
              label: "",
              class: "actions",
              cell: (t) => h("div", "row-actions", writeButton(ctx, "Revoke", () => void revoke(t), "btn small danger", { "data-testid": "revoke-token" })),
            },
          ],
          r.tokens,
          { empty: "No tokens.", testid: "tokens-table", stack: true, rowAttrs: (t) => ({ "data-token": t.name }) },
        ),
      );
    } catch (e) {
      if (!disposed) mount(box, h("p", "inline-error", `Could not load the tokens: ${describe(e)}`));
    }
  }

  async function createToken(): Promise<void> {
    create.disabled = true;
    try {
      const node = role.value === "node" ? nodeId.value.trim() : "";
      const r = await admin.createToken({
        role: roleFromText(role.value),
        name: name.value.trim() || node,
        nodeId: node,
        region: node ? region.value.trim() : "",
      });
      name.value = "";
      nodeId.value = "";
      region.value = "";
      const secret = h("input", { attrs: { type: "text", readonly: true, "data-testid": "token-secret", "aria-label": "Token secret" } });
      secret.value = r.secret;
      const copy = h("button", { class: "btn", attrs: { type: "button" } }, "Copy");
      copy.addEventListener("click", () => {
        void navigator.clipboard?.writeText(secret.value).then(
          () => toast("Copied.", "ok"),
          () => secret.select(),
        );
      });
      const done = h("button", { class: "btn primary", attrs: { type: "button", "data-testid": "token-done" } }, "Done");
      const m = modal({
        title: `New ${r.token ? roleText(r.token.role) : ""} token`,
        body: [
          h("p", null, "Copy the secret now: it is not stored anywhere readable and is never shown again."),
          h("div", "secret-row", secret, copy),
          h("div", "dialog-actions", done),
        ],
        testid: "token-dialog",
      });
      done.addEventListener("click", () => m.close());
      m.dialog.addEventListener("close", () => {
        secret.value = "";
      });
      secret.select();
      await load();
    } catch (e) {
      toast(`Could not create the token: ${describe(e)}`, "error");
    } finally {
      create.disabled = !ctx.canWrite;
    }
  }

  async function revoke(t: Token): Promise<void> {
    const yes = await confirmDialog({
      title: "Revoke token",
      message: [`Revoke the ${roleText(t.role)} token “`, h("strong", null, t.name || t.id), "”? Whoever uses it is refused from now on."],
      confirm: "Revoke",
      danger: true,
    });
    if (!yes) return;
    try {
      await admin.revokeToken({ id: t.id });
      toast(`Revoked ${t.name || t.id}`, "ok");
    } catch (e) {
      toast(`Could not revoke: ${describe(e)}`, "error");
    }
    await load();
  }

  void load();
  return {
    el,
    dispose() {
      disposed = true;
    },
  };
}
