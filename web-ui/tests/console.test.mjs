// End-to-end tests of the browser console: headless Chromium (Debian's, driven by
// playwright-core) against a real control plane and proxy (the debug binaries) and a mock
// upstream. The scenarios run in order and share one browser page, like an operator's
// session. Screenshots of every page go to web-ui/test-results/screenshots/.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { chromium } from "playwright-core";
import { ControlPlane, MockUpstream, Proxy, repoRoot, resultsDir, waitFor, webUi } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"];
const KEY = "sk-mock-PLAINTEXT-0123456789abcdef";
const MASKED = "sk-moc****cdef";
const XSS_LABEL = '<img src=x onerror="window.__xss=1">';
const XSS_MODEL = "<b>bold</b>";
const XSS_META = "<script>window.__xss=2</script>";
const shotsDir = path.join(resultsDir, "screenshots");
const logDir = path.join(resultsDir, "logs");
const docsImage = path.join(repoRoot, "docs", "images", "dashboard.png");
// A client key's expiry as typed into the form (a local date and time).
const KEY_EXPIRY = "2030-01-31T12:00";

let mock;
let learnMock;
let cp;
let proxy;
let browser;
let page;
let viewerToken = "";
// The current secret of the key the Keys tests create (the tests' copy, never the page's).
let keySecret = "";
// The secret of the key with a request limit and a budget (used again on the Usage page).
let limitedSecret = "";
const pageErrors = [];
const consoleErrors = [];
const fieldHeaders = [];
const dialogs = [];

async function shot(name, opts = {}) {
  // Full-page shots draw the sticky header where the page is scrolled to.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(shotsDir, `${name}.png`), fullPage: true, ...opts });
}

async function text(locator) {
  return ((await locator.textContent()) ?? "").trim();
}

async function num(locator) {
  return Number((await text(locator)).replace(/[^0-9.]/g, ""));
}

/** Waits until `locator`'s text satisfies `ok` (a RegExp or a predicate). */
async function expectText(what, locator, ok, timeout = 15_000) {
  const test = typeof ok === "function" ? ok : (t) => ok.test(t);
  let last = "";
  try {
    await waitFor(what, async () => {
      last = await text(locator);
      return test(last);
    }, { timeout });
  } catch (e) {
    throw new Error(`${e.message} (last text: ${JSON.stringify(last)})`);
  }
  return last;
}

async function visible(locator, timeout = 15_000) {
  await locator.waitFor({ state: "visible", timeout });
  return locator;
}

async function openPage(title, cls) {
  await page.getByRole("link", { name: title, exact: true }).click();
  await visible(page.locator(`.page-${cls}`));
}

function row(name) {
  return page.locator(`[data-testid=providers-table] tr[data-backend="${name}"]`);
}

function keyRow(name) {
  return page.locator(`[data-testid=keys-table] tr[data-key="${name}"]`);
}

/** A key's secret is nowhere in the page: markup, text, inputs, storage, open dialogs. */
async function assertSecretGone(secret) {
  const rest = secret.slice(10); // the part after the prefix the list shows
  const found = await page.evaluate(
    (needle) => {
      const where = [];
      if (document.documentElement.outerHTML.includes(needle)) where.push("markup");
      if (document.body.innerText.includes(needle)) where.push("text");
      if ([...document.querySelectorAll("input,textarea")].some((i) => i.value.includes(needle))) where.push("an input");
      if (JSON.stringify({ ...sessionStorage, ...localStorage }).includes(needle)) where.push("storage");
      if (document.querySelectorAll("dialog").length) where.push("an open dialog");
      return where;
    },
    rest,
  );
  assert.deepEqual(found, [], "the secret is gone from the page");
  assert.ok(!(await page.content()).includes(rest), "the secret is gone from the serialised page");
}

/**
 * Opens a provider's editor. The table is rendered again whenever the config version moves
 * (after a save, and once more from the live stream); a render between the mouse down and
 * up of a click swallows it, so click again until the dialog is open.
 */
async function openEditor(name) {
  const dialog = page.getByTestId("provider-dialog");
  await waitFor(`the editor of ${name}`, async () => {
    if (!(await dialog.isVisible())) await row(name).getByTestId("edit").click({ timeout: 2000 });
    return dialog.isVisible();
  });
  return dialog;
}

async function signIn(token) {
  await visible(page.locator("#token"));
  await page.fill("#token", token);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function signOut() {
  await page.getByTestId("logout").click();
  await visible(page.locator("#token"));
}

describe("browser console", { concurrency: false }, () => {
  before(async () => {
    fs.mkdirSync(shotsDir, { recursive: true });
    fs.mkdirSync(logDir, { recursive: true });
    for (const f of fs.readdirSync(logDir)) fs.rmSync(path.join(logDir, f));
    const dist = path.join(webUi, "dist");
    assert.ok(fs.existsSync(path.join(dist, "index.html")), "web-ui/dist is not built: run `npm --prefix web-ui run build` first");
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: run scripts/install-test-deps.sh (apt-get install chromium)`);
    mock = await new MockUpstream(KEY).start();
    cp = await new ControlPlane({ consoleDir: dist, logDir }).start();
    proxy = await new Proxy({ controlPlane: cp, logDir }).start();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    context.setDefaultTimeout(15_000);
    page = await context.newPage();
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("response", (r) => {
      const field = r.headers()["sidecar-field"];
      if (field) fieldHeaders.push(field);
    });
    page.on("console", (m) => {
      if (m.type() === "error") consoleErrors.push(m.text());
    });
    page.on("dialog", (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
  });

  after(async () => {
    await browser?.close();
    await proxy?.stop();
    await cp?.stop();
    await mock?.stop();
    await learnMock?.stop();
    proxy?.cleanup();
    cp?.cleanup();
  });

  test("a wrong token gets a clear message", async () => {
    await page.goto(cp.url);
    await signIn("sct_not_a_real_token_0000");
    const err = await visible(page.getByTestId("login-error"));
    assert.match(await text(err), /Wrong token/);
    assert.equal(new URL(page.url()).pathname, "/login");
    await shot("login-wrong-token");
  });

  test("an admin signs in and the dashboard is live", async () => {
    await signIn(cp.adminToken);
    await expectText("role badge", page.getByTestId("role"), /^admin$/);
    await expectText("live status", page.getByTestId("live-status"), /^live · config v\d+/);
    await expectText("one proxy connected", page.locator("[data-testid=stat-nodes] .stat-value"), /^1 \/ 1$/);
    await visible(page.locator('[data-testid=pool][data-pool="primary"]'));
    assert.equal(await page.getByTestId("disconnected-banner").isVisible(), false);
    // No traffic yet: the top keys panel says so.
    await expectText("no top keys yet", page.locator("[data-testid=top-keys] tr.empty"), /^No usage by client keys in the last 24 hours\.$/);
  });

  test("adding a provider: errors next to the fields the server names, then saved with the key masked", async () => {
    await openPage("Providers", "providers");
    await page.getByTestId("add-provider").click();
    const dialog = await visible(page.getByTestId("provider-dialog"));
    await dialog.locator("input[name=name]").fill("mock-main");
    await dialog.locator("input[name=label]").fill("Mock provider");
    await dialog.locator("input[name=base_url]").fill(mock.baseUrl);
    await dialog.locator("input[name=api_key]").fill(KEY);
    await dialog.locator("input[name=rpm_limit]").fill("0");
    const mapping = dialog.getByTestId("mapping-row").first();
    await mapping.getByTestId("mapping-canonical").fill("gpt-test");
    await mapping.getByTestId("mapping-cost-input").fill("2.5");
    await mapping.getByTestId("mapping-cost-output").fill("10");
    await dialog.getByTestId("save").click();

    // RPM 0: the server names backend.rpm_limit; the message sits under that field.
    const rpmError = dialog.locator('[data-field="rpm_limit"] .field-error');
    await expectText("RPM error", rpmError, /must be at least 1 \(got 0\)/);
    assert.equal(await dialog.locator('[data-field="rpm_limit"] input').getAttribute("aria-invalid"), "true");
    assert.equal(await dialog.getByTestId("form-error").isVisible(), false, "not a general error");
    assert.ok(fieldHeaders.includes("backend.rpm_limit"), `the server named the field in sidecar-field: ${fieldHeaders}`);
    await shot("provider-validation-error");

    // Fixed; next the empty native id of the mapping is refused, next to that input.
    await dialog.locator("input[name=rpm_limit]").fill("60");
    await dialog.getByTestId("save").click();
    const nativeError = dialog.locator('[data-field="model_mappings[\\"gpt-test\\"].native_id"] .field-error');
    await expectText("native id error", nativeError, /must not be empty/);
    assert.equal(await rpmError.isVisible(), false, "the old error is cleared");
    await mapping.getByTestId("mapping-native").fill("mock-large");

    // "Test key" calls ValidateBackend with the typed URL and key.
    await dialog.getByTestId("form-test-key").click();
    await expectText("key test result", dialog.getByTestId("key-result"), /Key accepted: HTTP 200 .*2 models listed/);

    await dialog.getByTestId("save").click();
    await dialog.waitFor({ state: "detached" });
    const r = await visible(row("mock-main"));
    await expectText("masked key", r.getByTestId("key"), (t) => t === MASKED);
    await expectText("status", r.getByTestId("status"), /^healthy$/);
    assert.equal(await text(r.getByTestId("rpm")), "60");
    assert.equal(await text(r.getByTestId("label")), "Mock provider");

    // The plaintext key is nowhere in the page: not in the markup, not in any input.
    const html = await page.content();
    assert.ok(!html.includes(KEY) && !html.includes("PLAINTEXT"), "plaintext key in the page markup");
    const values = await page.evaluate(() => [...document.querySelectorAll("input")].map((i) => i.value).join("\n"));
    assert.ok(!values.includes("PLAINTEXT"), "plaintext key in an input");
    await shot("providers");
  });

  test("editing a provider changes only what was edited", async () => {
    await row("mock-main").getByTestId("edit").click();
    const dialog = await visible(page.getByTestId("provider-dialog"));
    assert.equal(await dialog.locator("input[name=api_key]").inputValue(), "", "the key is write-only");
    assert.match((await dialog.locator("input[name=api_key]").getAttribute("placeholder")) ?? "", /sk-moc\*\*\*\*cdef/);
    assert.equal(await dialog.locator("input[name=rpm_limit]").inputValue(), "60");
    assert.equal(await dialog.locator("input[name=window_seconds]").inputValue(), "60", "a minute unless set");
    assert.equal(await dialog.getByTestId("mapping-cost-input").first().inputValue(), "2.5");
    await dialog.locator("input[name=rpm_limit]").fill("120");
    await dialog.locator("input[name=window_seconds]").fill("10");
    await dialog.getByTestId("add-mapping").click();
    const second = dialog.getByTestId("mapping-row").nth(1);
    await second.getByTestId("mapping-canonical").fill("gpt-alt");
    await second.getByTestId("mapping-native").fill("mock-small");
    await shot("provider-edit");
    await dialog.getByTestId("save").click();
    await dialog.waitFor({ state: "detached" });
    await expectText("new RPM", row("mock-main").getByTestId("rpm"), /^120$/);
    await expectText("models", row("mock-main").getByTestId("models"), (t) => t.includes("gpt-alt") && t.includes("gpt-test"));
    const b = await cp.ctl("backend", "get", "mock-main");
    const backend = b.backend ?? b;
    assert.equal(backend.api_key_masked, MASKED, "key unchanged");
    assert.equal(backend.model_mappings["gpt-test"].cost.input, 2.5e-6, "prices are stored per token");
    assert.equal(backend.model_mappings["gpt-alt"].native_id, "mock-small");
    assert.equal(backend.window_seconds, 10, "the provider's window is saved");
  });

  test("a model's own RPM limit: above the backend's it is refused next to the field, then saved and shown", async () => {
    await row("mock-main").getByTestId("edit").click();
    const dialog = await visible(page.getByTestId("provider-dialog"));
    const canonicals = await dialog.getByTestId("mapping-canonical").evaluateAll((els) => els.map((e) => e.value));
    const at = canonicals.indexOf("gpt-alt");
    assert.ok(at >= 0, `gpt-alt is in the editor: ${canonicals}`);
    const alt = dialog.getByTestId("mapping-row").nth(at);
    assert.equal(await alt.getByTestId("mapping-rpm-limit").inputValue(), "", "no model limit yet");
    await alt.locator("details.mapping-more > summary").click();
    const rpmLimit = await visible(alt.getByTestId("mapping-rpm-limit"));

    // The backend allows 120 RPM (set in the previous test); 500 for one model is refused,
    // and the server's message sits under that model's RPM limit field.
    await rpmLimit.fill("500");
    await dialog.getByTestId("save").click();
    const limitField = dialog.locator('[data-field="model_mappings[\\"gpt-alt\\"].rpm_limit"]');
    await expectText("model RPM limit error", limitField.locator(".field-error"), /500 exceeds the backend's rpm_limit \(120\)/);
    assert.equal(await limitField.locator("input").getAttribute("aria-invalid"), "true");
    assert.equal(await dialog.getByTestId("form-error").isVisible(), false, "not a general error");
    assert.ok(fieldHeaders.includes('backend.model_mappings["gpt-alt"].rpm_limit'), `the server named the field in sidecar-field: ${fieldHeaders}`);
    await shot("provider-model-limit-error");

    // Within the backend's: saved; the TPM limit left empty stays unset.
    await rpmLimit.fill("60");
    await dialog.getByTestId("save").click();
    await dialog.waitFor({ state: "detached" });
    const chips = row("mock-main").getByTestId("models");
    await expectText("the model's limit in its chip", chips.locator('li[data-model="gpt-alt"]'), (t) => t === "gpt-alt 60 RPM");
    assert.equal(await chips.locator('li[data-model="gpt-test"]').getByTestId("model-limits").count(), 0, "gpt-test has no limit of its own");
    const b = await cp.ctl("backend", "get", "mock-main");
    const backend = b.backend ?? b;
    assert.equal(backend.model_mappings["gpt-alt"].rpm_limit, 60, "rpmLimit stored");
    assert.equal(backend.model_mappings["gpt-alt"].tpm_limit ?? null, null, "tpmLimit unset");
    assert.equal(backend.model_mappings["gpt-test"].rpm_limit ?? null, null, "the other model unchanged");
    assert.equal(backend.model_mappings["gpt-alt"].native_id, "mock-small", "the rest of the mapping kept");
    assert.equal(backend.rpm_limit, 120);

    // Reopened, the form shows the stored limit.
    await row("mock-main").getByTestId("edit").click();
    const again = await visible(page.getByTestId("provider-dialog"));
    assert.equal(await again.getByTestId("mapping-rpm-limit").nth(at).inputValue(), "60");
    assert.equal(await again.getByTestId("mapping-tpm-limit").nth(at).inputValue(), "");
    await again.getByRole("button", { name: "Cancel" }).click();
    await again.waitFor({ state: "detached" });
  });

  test("a model's own limit window: out of range is refused next to the field, then saved, shown and cleared", async () => {
    const stored = async () => {
      const b = await cp.ctl("backend", "get", "mock-main");
      return b.backend ?? b;
    };
    const before = await stored();
    assert.equal(before.model_mappings["gpt-alt"].window_seconds ?? null, null, "no model window yet");
    const chip = row("mock-main").getByTestId("models").locator('li[data-model="gpt-alt"]');

    const dialog = await openEditor("mock-main");
    const canonicals = await dialog.getByTestId("mapping-canonical").evaluateAll((els) => els.map((e) => e.value));
    const at = canonicals.indexOf("gpt-alt");
    assert.ok(at >= 0, `gpt-alt is in the editor: ${canonicals}`);
    const alt = dialog.getByTestId("mapping-row").nth(at);
    await alt.locator("details.mapping-more > summary").click();
    assert.equal(await visible(alt.getByTestId("mapping-rpm-limit")).then((l) => l.inputValue()), "60", "the model's RPM limit from the previous test");
    const windowInput = await visible(alt.getByTestId("mapping-window-seconds"));
    assert.equal(await windowInput.inputValue(), "", "unset: the backend's window");

    // Outside 1..=60: the server names the model's window_seconds; the message sits under
    // that model's window field, and nothing is stored.
    const windowField = dialog.locator('[data-field="model_mappings[\\"gpt-alt\\"].window_seconds"]');
    for (const bad of ["0", "61"]) {
      await windowInput.fill(bad);
      await dialog.getByTestId("save").click();
      await expectText(`model window ${bad} error`, windowField.locator(".field-error"), new RegExp(`1\\.\\.=60.*\\(got ${bad}\\b`));
      assert.equal(await windowField.locator("input").getAttribute("aria-invalid"), "true");
      assert.equal(await dialog.getByTestId("form-error").isVisible(), false, "not a general error");
      const b = await stored();
      assert.equal(b.model_mappings["gpt-alt"].window_seconds ?? null, null, `window ${bad} not stored`);
      assert.equal(b.model_mappings["gpt-alt"].rpm_limit, 60, "the model's limit unchanged");
    }
    // An update names the field in the patch (`patch.`), a create in the backend (`backend.`).
    assert.ok(
      fieldHeaders.some((f) => /^(backend|patch)\.model_mappings\["gpt-alt"\]\.window_seconds$/.test(f)),
      `the server named the field in sidecar-field: ${fieldHeaders}`,
    );
    await shot("provider-model-window-error");

    // 10 s: saved, stored, and shown in the chip after the limit.
    await windowInput.fill("10");
    await dialog.getByTestId("save").click();
    await dialog.waitFor({ state: "detached" });
    await expectText("the model's window in its chip", chip, (t) => t === "gpt-alt 60 RPM / 10 s");
    let b = await stored();
    assert.equal(b.model_mappings["gpt-alt"].window_seconds, 10, "windowSeconds stored");
    assert.equal(b.model_mappings["gpt-alt"].rpm_limit, 60, "rpmLimit kept");
    assert.equal(b.model_mappings["gpt-alt"].native_id, "mock-small", "the rest of the mapping kept");
    assert.equal(b.model_mappings["gpt-test"].window_seconds ?? null, null, "the other model unchanged");

    // Reopened, the form shows the stored window; emptied, it is unset again (the backend's
    // window), so the later tests see gpt-alt as before.
    const again = await openEditor("mock-main");
    const againAlt = again.getByTestId("mapping-row").nth(at);
    assert.equal(await againAlt.getByTestId("mapping-window-seconds").inputValue(), "10");
    await againAlt.locator("details.mapping-more > summary").click();
    await (await visible(againAlt.getByTestId("mapping-window-seconds"))).fill("");
    await again.getByTestId("save").click();
    await again.waitFor({ state: "detached" });
    await expectText("the chip without a window", chip, (t) => t === "gpt-alt 60 RPM");
    b = await stored();
    assert.equal(b.model_mappings["gpt-alt"].window_seconds ?? null, null, "emptied: unset");
    assert.equal(b.model_mappings["gpt-alt"].rpm_limit, 60, "rpmLimit kept");
  });

  test("an Anthropic provider: the API chosen in the form is tested, saved, and shown in the table and its editor", async () => {
    await openPage("Providers", "providers");
    await page.getByTestId("add-provider").click();
    const dialog = await visible(page.getByTestId("provider-dialog"));
    const api = dialog.locator("select[name=api]");
    assert.equal(await api.inputValue(), "openai", "OpenAI-compatible unless chosen");
    assert.match(await text(dialog.locator('[data-field="api"] .hint')), /Anthropic: \/v1\/messages \(key sent as x-api-key\)/);
    await dialog.locator("input[name=name]").fill("mock-claude");
    await dialog.locator("input[name=base_url]").fill(mock.baseUrl);
    await dialog.locator("input[name=api_key]").fill(KEY);
    await api.selectOption("anthropic");
    const mapping = dialog.getByTestId("mapping-row").first();
    await mapping.getByTestId("mapping-canonical").fill("claude-test");
    await mapping.getByTestId("mapping-native").fill("mock-large");

    // "Test key" sends the chosen API: the key goes as x-api-key, so the mock (which only
    // takes a bearer token) sees no Authorization header and refuses it.
    const seen = mock.calls.length;
    await dialog.getByTestId("form-test-key").click();
    await expectText("key test result", dialog.getByTestId("key-result"), /^Key not accepted \(HTTP 401\)/);
    const probes = mock.calls.slice(seen).filter((c) => c.path === "/v1/models");
    assert.ok(probes.some((c) => c.authorization === ""), `the key was not sent as a bearer token: ${JSON.stringify(probes.map((c) => c.authorization))}`);
    await shot("provider-anthropic-form");

    await dialog.getByTestId("save").click();
    await dialog.waitFor({ state: "detached" });
    const r = await visible(row("mock-claude"));
    await expectText("API in the table", r.getByTestId("api"), (t) => t === "anthropic");
    assert.equal(await text(row("mock-main").getByTestId("api")), "openai", "the other provider is OpenAI-compatible");
    await shot("providers-anthropic");

    // Reopened, the editor shows the stored API.
    const again = await openEditor("mock-claude");
    assert.equal(await again.locator("select[name=api]").inputValue(), "anthropic");
    assert.equal(await text(again.locator("select[name=api] option:checked")), "Anthropic");
    await again.getByRole("button", { name: "Cancel" }).click();
    await again.waitFor({ state: "detached" });

    // Gone again, so the rest of the session sees only mock-main.
    await cp.ctl("backend", "rm", "mock-claude");
    await r.waitFor({ state: "detached" });
  });

  test("keys: an admin creates a key; its secret is shown once, works at the proxy and is then gone from the page", async () => {
    await openPage("Keys", "keys");
    await expectText("empty list", page.getByTestId("keys-table"), /No keys yet/);
    await page.getByTestId("create-key").click();
    const form = await visible(page.getByTestId("key-dialog"));
    assert.equal(await form.locator("input[name=rpm_limit]").count(), 1, "a request limit input");
    assert.equal(await form.locator("input[name=tpm_limit]").count(), 1, "a token limit input");
    assert.equal(await form.locator("input[name=max_concurrent]").count(), 1, "a concurrency limit input");
    assert.equal(await form.locator("input[name=budget_usd]").count(), 1, "a budget input");
    await form.locator("input[name=name]").fill("billing-agent");
    await form.locator("input[name=team]").fill("billing");
    await form.locator("input[name=models]").fill("gpt-test, gpt-alt");
    await form.locator("input[name=pools]").fill("primary");
    await form.locator("input[name=expires]").fill(KEY_EXPIRY);
    await shot("key-create");
    await form.getByTestId("save-key").click();
    await form.waitFor({ state: "detached" });

    // The secret, once, with a copy button and the note that it is never shown again.
    const box = await visible(page.getByTestId("key-secret-dialog"));
    keySecret = await box.getByTestId("key-secret").inputValue();
    assert.match(keySecret, /^sk-sc-[A-Za-z0-9]{40}$/);
    assert.match(await text(box.getByTestId("key-secret-note")), /Shown only this once/);
    await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: cp.url });
    await box.getByTestId("key-secret-copy").click();
    await expectText("copied", page.locator(".toast-ok").last(), /Copied/);
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), keySecret, "Copy puts the secret on the clipboard");
    await page.evaluate(() => navigator.clipboard.writeText(""));
    await shot("key-secret");
    await box.getByTestId("key-secret-done").click();
    await box.waitFor({ state: "detached" });
    await assertSecretGone(keySecret);

    // The list: its prefix (never the secret), state, team, scope, expiry, creation time.
    const r = await visible(keyRow("billing-agent"));
    assert.equal(await text(r.getByTestId("key-prefix")), `${keySecret.slice(0, 10)}…`);
    assert.equal(await text(r.getByTestId("key-state")), "active");
    assert.equal(await text(r.getByTestId("key-team")), "billing");
    assert.deepEqual(await r.getByTestId("key-models").locator("li").allTextContents(), ["gpt-test", "gpt-alt"]);
    assert.deepEqual(await r.getByTestId("key-pools").locator("li").allTextContents(), ["primary"]);
    assert.equal(await text(r.getByTestId("key-expires")), "2030-01-31 12:00:00");
    assert.match(await text(r.getByTestId("key-created")), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/);
    const stored = (await cp.ctl("key", "list")).keys;
    assert.equal(stored.length, 1);
    assert.equal(stored[0].name, "billing-agent");
    assert.equal(Number(stored[0].expires_at_ms), new Date(KEY_EXPIRY).getTime(), "the local date and time, as Unix ms");
    assert.deepEqual(stored[0].models, ["gpt-test", "gpt-alt"]);
    await shot("keys");

    // The secret works at the proxy (once the proxy has the snapshot with the key).
    await waitFor("a 200 with the new key", async () => (await proxy.chat("gpt-test", keySecret)) === 200, { timeout: 10_000 });
  });

  test("keys: refusals are shown next to the field the server names, and nothing is stored", async () => {
    await page.getByTestId("create-key").click();
    const form = await visible(page.getByTestId("key-dialog"));
    await form.locator("input[name=name]").fill("bad-key");
    await form.locator("input[name=pools]").fill("primary, nope");
    await form.getByTestId("save-key").click();
    const poolsField = form.locator('[data-field="pools"]');
    await expectText("unknown pool error", poolsField.locator(".field-error"), /unknown pool "nope"/);
    assert.equal(await poolsField.locator("input").getAttribute("aria-invalid"), "true");
    assert.equal(await form.getByTestId("form-error").isVisible(), false, "not a general error");
    assert.ok(fieldHeaders.includes("key.pools[1]"), `the server named the field in sidecar-field: ${fieldHeaders}`);
    await shot("key-field-error");

    // A name taken by a live key (case-insensitively), then an expiry in the past.
    await form.locator("input[name=pools]").fill("primary");
    await form.locator("input[name=name]").fill("Billing-Agent");
    await form.getByTestId("save-key").click();
    await expectText("duplicate name error", form.locator('[data-field="name"] .field-error'), /already exists/);
    assert.equal(await poolsField.locator(".field-error").isVisible(), false, "the old error is cleared");
    await form.locator("input[name=name]").fill("bad-key");
    await form.locator("input[name=expires]").fill("2020-01-01T00:00");
    await form.getByTestId("save-key").click();
    await expectText("past expiry error", form.locator('[data-field="expires_at_ms"] .field-error'), /must be in the future/);
    await form.getByRole("button", { name: "Cancel" }).click();
    await form.waitFor({ state: "detached" });
    const names = (await cp.ctl("key", "list", "--all")).keys.map((k) => k.name);
    assert.deepEqual(names, ["billing-agent"], "nothing stored");
  });

  test("keys: editing the scope (no models = all), disabling and enabling", async () => {
    const r = keyRow("billing-agent");
    await r.getByTestId("key-edit").click();
    const form = await visible(page.getByTestId("key-dialog"));
    assert.equal(await form.locator("input[name=models]").inputValue(), "gpt-test, gpt-alt");
    assert.equal(await form.locator("input[name=expires]").inputValue(), KEY_EXPIRY);
    await form.locator("input[name=team]").fill("payments");
    await form.locator("input[name=models]").fill("");
    await form.getByTestId("save-key").click();
    await form.waitFor({ state: "detached" });
    await expectText("all models", r.getByTestId("key-models"), /^all$/);
    await expectText("new team", r.getByTestId("key-team"), /^payments$/);
    assert.deepEqual(await r.getByTestId("key-pools").locator("li").allTextContents(), ["primary"], "pools unchanged");
    const [k] = (await cp.ctl("key", "list")).keys;
    assert.deepEqual(k.models ?? [], [], "an empty list with set_models: every model");
    assert.deepEqual(k.pools, ["primary"]);
    assert.equal(k.team, "payments");
    assert.equal(Number(k.expires_at_ms), new Date(KEY_EXPIRY).getTime(), "the expiry unchanged");

    // "Never" clears the expiry (UpdateKey with expires_at_ms 0).
    await r.getByTestId("key-edit").click();
    const again = await visible(page.getByTestId("key-dialog"));
    assert.equal(await again.locator("input[name=models]").inputValue(), "", "all models: an empty field");
    await again.getByTestId("key-no-expiry").click();
    assert.equal(await again.locator("input[name=expires]").inputValue(), "");
    await again.getByTestId("save-key").click();
    await again.waitFor({ state: "detached" });
    await expectText("no expiry", r.getByTestId("key-expires"), /^never$/);
    assert.equal(Number((await cp.ctl("key", "list")).keys[0].expires_at_ms ?? 0), 0, "stored without an expiry");

    await r.getByTestId("key-toggle").click();
    await expectText("disabled", r.getByTestId("key-state"), /^disabled$/);
    assert.equal(await text(r.getByTestId("key-toggle")), "Enable");
    assert.equal(await r.getAttribute("data-state"), "disabled");
    await waitFor("the proxy to refuse the disabled key", async () => (await proxy.chat("gpt-test", keySecret)) === 401, { timeout: 10_000 });
    await shot("key-disabled");
    await r.getByTestId("key-toggle").click();
    await expectText("active again", r.getByTestId("key-state"), /^active$/);
    await waitFor("the proxy to accept it again", async () => (await proxy.chat("gpt-test", keySecret)) === 200, { timeout: 10_000 });
  });

  test("keys: rotating shows the new secret once; the old one stops working", async () => {
    const r = keyRow("billing-agent");
    const oldSecret = keySecret;
    await r.getByTestId("key-rotate").click();
    const confirm = await visible(page.getByTestId("confirm"));
    assert.match(await text(confirm), /Give key “billing-agent” a new secret\?/);
    await page.getByTestId("confirm-yes").click();
    const box = await visible(page.getByTestId("key-secret-dialog"));
    keySecret = await box.getByTestId("key-secret").inputValue();
    assert.match(keySecret, /^sk-sc-[A-Za-z0-9]{40}$/);
    assert.notEqual(keySecret, oldSecret);
    assert.match(await text(box.getByTestId("key-secret-note")), /Shown only this once/);
    await box.getByTestId("key-secret-done").click();
    await box.waitFor({ state: "detached" });
    await expectText("new prefix", r.getByTestId("key-prefix"), (t) => t === `${keySecret.slice(0, 10)}…`);
    await assertSecretGone(keySecret);
    await assertSecretGone(oldSecret);
    await waitFor("the proxy to refuse the old secret", async () => (await proxy.chat("gpt-test", oldSecret)) === 401, { timeout: 10_000 });
    assert.equal(await proxy.chat("gpt-test", keySecret), 200, "the new secret works");
  });

  test("keys: revoking asks first; the key leaves the list and shows under “show revoked”", async () => {
    // A second key, made with sidecarctl: the console lists it too (and the viewer sees it later).
    await cp.ctl("key", "create", "--name", "ci-runner", "--team", "platform");
    const r = keyRow("billing-agent");
    await visible(keyRow("ci-runner"));
    await r.getByTestId("key-revoke").click();
    const confirm = await visible(page.getByTestId("confirm"));
    assert.match(await text(confirm), /Revoke key “billing-agent”/);
    await shot("key-revoke-confirm");
    await page.getByTestId("confirm-no").click();
    await confirm.waitFor({ state: "detached" });
    assert.equal(await text(r.getByTestId("key-state")), "active", "cancel keeps it");
    await r.getByTestId("key-revoke").click();
    await visible(page.getByTestId("confirm"));
    await page.getByTestId("confirm-yes").click();
    await r.waitFor({ state: "detached" });
    await expectText("revoked toast", page.locator(".toast-ok").last(), /Revoked billing-agent/);
    await visible(keyRow("ci-runner"));

    await page.getByTestId("show-revoked").check();
    const revoked = await visible(keyRow("billing-agent"));
    assert.equal(await text(revoked.getByTestId("key-state")), "revoked");
    assert.equal(await revoked.locator("button").count(), 0, "nothing left to do with a revoked key");
    await shot("keys-revoked");
    await page.getByTestId("show-revoked").uncheck();
    await revoked.waitFor({ state: "detached" });
    await waitFor("the proxy to refuse the revoked key", async () => (await proxy.chat("gpt-test", keySecret)) === 401, { timeout: 10_000 });
    const all = (await cp.ctl("key", "list", "--all")).keys;
    assert.ok(Number(all.find((k) => k.name === "billing-agent").revoked_at_ms) > 0, "stored as revoked");
  });

  test("keys: request, token and concurrency limits and a daily budget set in the form are shown in the table and stored", async () => {
    await page.getByTestId("create-key").click();
    const form = await visible(page.getByTestId("key-dialog"));
    await form.locator("input[name=name]").fill("limited-agent");
    await form.locator("input[name=team]").fill("research");
    await form.locator("input[name=rpm_limit]").fill("60");
    await form.locator("input[name=tpm_limit]").fill("20000");
    await form.locator("input[name=max_concurrent]").fill("4");
    await form.locator("input[name=budget_usd]").fill("5");
    await form.locator("select[name=budget_period]").selectOption("day");
    await shot("key-create-limits");
    await form.getByTestId("save-key").click();
    await form.waitFor({ state: "detached" });
    const box = await visible(page.getByTestId("key-secret-dialog"));
    limitedSecret = await box.getByTestId("key-secret").inputValue();
    await box.getByTestId("key-secret-done").click();
    await box.waitFor({ state: "detached" });

    const r = await visible(keyRow("limited-agent"));
    assert.equal(await text(r.getByTestId("key-rpm")), "60 RPM");
    assert.equal(await text(r.getByTestId("key-tpm")), "20,000 TPM");
    assert.equal(await text(r.getByTestId("key-concurrent")), "4 at once");
    assert.equal(await text(r.getByTestId("key-budget")), "$5.00/day");
    assert.equal(await text(keyRow("ci-runner").getByTestId("key-limits")), "none", "a key without limits");
    const shown = await cp.ctl("key", "show", "limited-agent");
    const k = shown.key ?? shown;
    assert.equal(k.rpm_limit, 60);
    assert.equal(k.budget_usd, 5);
    assert.match(String(k.budget_period), /^(1|BUDGET_PERIOD_DAY|Day|day)$/, `a daily budget (got ${k.budget_period})`);
    assert.equal(k.tpm_limit, 20000);
    assert.equal(k.max_concurrent, 4);

    // Editing: the form shows the limits; the server's refusal goes under the budget input.
    const dialog = page.getByTestId("key-dialog");
    await waitFor("the key's editor", async () => {
      if (!(await dialog.isVisible())) await r.getByTestId("key-edit").click({ timeout: 2000 });
      return dialog.isVisible();
    });
    assert.equal(await dialog.locator("input[name=rpm_limit]").inputValue(), "60");
    assert.equal(await dialog.locator("input[name=tpm_limit]").inputValue(), "20000");
    assert.equal(await dialog.locator("input[name=max_concurrent]").inputValue(), "4");
    // Over the largest limit: the server's refusal goes under that input.
    await dialog.locator("input[name=max_concurrent]").fill("100000001");
    await dialog.getByTestId("save-key").click();
    await expectText("concurrency error", dialog.locator('[data-field="max_concurrent"] .field-error'), /must be at most 100000000/);
    assert.ok(fieldHeaders.includes("key.max_concurrent"), `the server named the field: ${fieldHeaders}`);
    await dialog.locator("input[name=max_concurrent]").fill("8");
    assert.equal(await dialog.locator("input[name=budget_usd]").inputValue(), "5");
    assert.equal(await dialog.locator("select[name=budget_period]").inputValue(), "day");
    await dialog.locator("input[name=budget_usd]").fill("-1");
    await dialog.getByTestId("save-key").click();
    await expectText("budget error", dialog.locator('[data-field="budget_usd"] .field-error'), /must be between 0 and/);
    assert.ok(fieldHeaders.includes("key.budget_usd"), `the server named the field: ${fieldHeaders}`);
    assert.equal(await dialog.getByTestId("form-error").isVisible(), false, "not a general error");
    await dialog.locator("input[name=budget_usd]").fill("50");
    await dialog.locator("select[name=budget_period]").selectOption("month");
    await dialog.getByTestId("save-key").click();
    await dialog.waitFor({ state: "detached" });
    await expectText("monthly budget", r.getByTestId("key-budget"), /^\$50\.00\/month$/);
    assert.equal(await text(r.getByTestId("key-rpm")), "60 RPM", "the request limit unchanged");
    const after = await cp.ctl("key", "show", "limited-agent");
    assert.equal((after.key ?? after).budget_usd, 50);
    assert.equal((after.key ?? after).rpm_limit, 60);
    assert.equal((after.key ?? after).max_concurrent, 8, "the concurrency limit saved with the budget");
    assert.equal(await text(r.getByTestId("key-concurrent")), "8 at once");
    await shot("keys-limits");
  });

  test("traffic through the proxy moves the dashboard counters", async () => {
    await openPage("Dashboard", "dashboard");
    const requests = page.locator("[data-testid=stat-requests] .stat-value");
    await expectText("requests card", requests, /^\d/);
    const before = await num(requests);
    // The proxy has the backend within moments of the write; wait for its first 200.
    await waitFor("a 200 through the proxy", async () => (await proxy.chat("gpt-test")) === 200, { timeout: 10_000 });
    for (let i = 0; i < 5; i++) assert.equal(await proxy.chat(i % 2 ? "gpt-alt" : "gpt-test"), 200);
    await expectText("requests counter", requests, (t) => Number(t.replace(/,/g, "")) >= before + 6, 20_000);
    await expectText("tokens counter", page.locator("[data-testid=stat-tokens] .stat-value"), (t) => Number(t.replace(/,/g, "")) >= 90);
    await expectText("cost", page.locator("[data-testid=stat-cost] .stat-value"), (t) => t !== "$0.00");
    await expectText("live backend row", page.locator('[data-testid=live-backends] tr[data-backend="mock-main"]'), /healthy/);
    await shot("dashboard");
    const update = process.env.UPDATE_SCREENSHOTS === "1" || !fs.existsSync(docsImage);
    if (update) {
      fs.mkdirSync(path.dirname(docsImage), { recursive: true });
      await page.screenshot({ path: docsImage, fullPage: false });
    }
  });

  test("the live backends table shows a model's own limits under its backend", async () => {
    await openPage("Dashboard", "dashboard");
    const live = page.getByTestId("live-backends");
    // gpt-alt has its own 60 RPM on mock-main (120 RPM); gpt-test has none of its own.
    const alt = live.locator('tr[data-testid=model-live][data-model="gpt-alt"]');
    await expectText("gpt-alt's live line", alt.locator('td[data-label="In window"]'), /^\d+ \/ 60$/);
    assert.equal(await text(alt.locator(".model-live-name")), "gpt-alt");
    assert.equal(await alt.getAttribute("data-parent"), "mock-main");
    await visible(alt.locator('td[data-label="Bucket"] [role=meter]'));
    assert.equal(await live.locator('tr[data-testid=model-live][data-model="gpt-test"]').count(), 0, "gpt-test has no line of its own");
    assert.equal(await live.getByTestId("model-live").count(), 1, "one line per model with its own limits");
    // Right under its backend's row, which keeps its own figures.
    assert.equal(await alt.evaluate((tr) => tr.previousElementSibling?.getAttribute("data-backend")), "mock-main");
    const backend = live.locator('tr[data-backend="mock-main"]');
    assert.match(await text(backend.locator('td[data-label="In window"]')), /^\d+ \/ 120$/);
    await shot("dashboard-model-live");
  });

  test("usage: filtered by client key, the page shows that key's requests", async () => {
    assert.ok(limitedSecret, "the limited key was created on the Keys page");
    assert.equal(await proxy.chat("gpt-test", limitedSecret), 200);
    assert.equal(await proxy.chat("gpt-alt", limitedSecret), 200);
    // The usage reaches the control plane within a few seconds.
    await waitFor("the key's usage at the control plane", async () => Number((await cp.ctl("stats", "--client-key", "limited-agent")).totals.requests ?? 0) >= 2, { timeout: 20_000, interval: 500 });
    // Opened afresh, so the key list is current.
    await openPage("Dashboard", "dashboard");
    await openPage("Usage", "usage");
    const summary = page.getByTestId("usage-summary");
    const all = Number((await expectText("summary", summary, /^\d+ requests/)).match(/^(\d+)/)[1]);
    const keyFilter = page.getByTestId("filter-key");
    await waitFor("the key in the filter", async () => (await keyFilter.locator("option").allTextContents()).includes("limited-agent"));
    assert.ok((await keyFilter.locator("option").allTextContents()).includes("billing-agent (revoked)"), "revoked keys are listed too");
    await keyFilter.selectOption({ label: "limited-agent" });
    await expectText("the key's requests", summary, /^2 requests · 0(\.0+)?% errors · 0 upstream 429s · 30 tokens/);
    assert.ok(all > 2, `all keys (${all} requests) include other traffic`);
    await expectText("the key's backend", page.getByTestId("usage-by-backend"), /mock-main/);
    await shot("usage-by-key");
    await keyFilter.selectOption("");
    await expectText("all keys again", summary, (t) => Number(t.match(/^(\d+)/)?.[1]) >= all);
  });

  test("dashboard: the top client keys by spend, the costlier key first with its name and team, requests without a key as “(no key)”", async () => {
    // Two keys made with sidecarctl (the JSON has the secret, once); one spends four times the other.
    const high = (await cp.ctl("key", "create", "--name", "spend-high", "--team", "growth")).secret;
    const low = (await cp.ctl("key", "create", "--name", "spend-low", "--team", "ops")).secret;
    assert.match(high, /^sk-sc-[A-Za-z0-9]{40}$/);
    await waitFor("a 200 with the costlier key", async () => (await proxy.chat("gpt-test", high)) === 200, { timeout: 10_000 });
    for (let i = 0; i < 3; i++) assert.equal(await proxy.chat("gpt-test", high), 200);
    await waitFor("a 200 with the cheaper key", async () => (await proxy.chat("gpt-test", low)) === 200, { timeout: 10_000 });
    assert.equal(await proxy.chat("gpt-test"), 200, "a request without a key");
    const requests = async (key) => Number((await cp.ctl("stats", "--client-key", key)).totals.requests ?? 0);
    await waitFor("both keys' usage at the control plane", async () => (await requests("spend-high")) >= 4 && (await requests("spend-low")) >= 1, { timeout: 20_000, interval: 500 });

    await openPage("Dashboard", "dashboard");
    const panel = await visible(page.getByTestId("top-keys-panel"));
    assert.match(await text(panel.locator("h2")), /^Top client keys by spend \(24 h\)$/);
    const top = panel.getByTestId("top-keys");
    const highRow = top.locator('tr[data-key="spend-high"]');
    const lowRow = top.locator('tr[data-key="spend-low"]');
    await expectText("the costlier key's requests", highRow.getByTestId("top-key-requests"), /^4$/, 20_000);
    await expectText("the cheaper key's requests", lowRow.getByTestId("top-key-requests"), /^1$/);
    assert.equal(await text(highRow.getByTestId("top-key-name")), "spend-high");
    assert.equal(await text(highRow.getByTestId("top-key-prefix")), `${high.slice(0, 10)}…`, "the key's prefix, never its secret");
    assert.equal(await text(highRow.getByTestId("top-key-team")), "growth");
    assert.equal(await text(lowRow.getByTestId("top-key-team")), "ops");
    assert.equal(await text(highRow.getByTestId("top-key-tokens")), "60");
    assert.ok((await num(highRow.getByTestId("top-key-cost"))) > (await num(lowRow.getByTestId("top-key-cost"))), "the costlier key spent more");
    // At most ten rows, by cost descending; the costlier key above the cheaper one.
    const rows = top.getByTestId("top-key");
    const names = await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-key")));
    assert.ok(names.length <= 10, `${names.length} rows`);
    assert.ok(names.indexOf("spend-high") < names.indexOf("spend-low"), `the costlier key first: ${names}`);
    const costs = (await top.getByTestId("top-key-cost").allTextContents()).map((t) => Number(t.replace(/[^0-9.]/g, "")));
    assert.deepEqual(costs, [...costs].sort((a, b) => b - a), "sorted by cost, descending");
    // The request without a key is among the top ten here.
    await expectText("requests without a key", top.locator('tr[data-key-id=""]').getByTestId("top-key-name"), /^\(no key\)$/);
    assert.ok(!(await page.content()).includes(high.slice(10)), "the secret is not in the page");
    await shot("dashboard-top-keys");
  });

  test("a 429 from the upstream shows the cooldown countdown and history", async () => {
    mock.rateLimit(30);
    const status = await proxy.chat("gpt-test");
    assert.notEqual(status, 200);
    assert.ok(mock.chatCalls().some((c) => c.status === 429), "the mock answered 429");
    await openPage("Providers", "providers");
    const r = row("mock-main");
    await expectText("cooling status", r.getByTestId("status"), /^cooling$/, 10_000);
    const first = await expectText("countdown", r.getByTestId("cooldown"), /\d+s left$/);
    await expectText("countdown ticking", r.getByTestId("cooldown"), (t) => /\d+s left$/.test(t) && t !== first, 5000);
    await shot("providers-cooling");
    mock.rateLimit(0);

    await openPage("Dashboard", "dashboard");
    await expectText("pool cooling count", page.locator('[data-pool="primary"] [data-count="cooling"]'), /^1$/);

    await openPage("Cooldowns", "cooldowns");
    const event = await visible(page.locator('[data-testid=cooldowns-table] tr[data-backend="mock-main"]').first());
    assert.match(await text(event), /active/);
    assert.match(await text(event), /30\.0 s|30s|1m/);
    await shot("cooldowns");
  });

  test("usage: hourly and daily tables with filters", async () => {
    await openPage("Usage", "usage");
    await expectText("summary", page.getByTestId("usage-summary"), /^\d+ requests/);
    const byTime = page.getByTestId("usage-by-time");
    await expectText("hour rows", byTime.locator("thead"), /Hour/);
    await visible(byTime.locator("tbody tr:not(.empty)").first());
    await expectText("per backend", page.getByTestId("usage-by-backend"), /mock-main/);
    await page.getByTestId("filter-granularity").selectOption("day");
    await expectText("day rows", byTime.locator("thead"), /Day \(UTC\)/);
    await page.getByTestId("filter-model").selectOption("gpt-alt");
    await expectText("filtered summary", page.getByTestId("usage-summary"), /^[1-9]\d* requests/);
    await page.getByTestId("filter-granularity").selectOption("hour");
    await page.getByTestId("filter-model").selectOption("");
    await expectText("all models", page.getByTestId("usage-summary"), /^\d+ requests/);
    await shot("usage");
  });

  test("nodes: region, acknowledged config version, connected, last report", async () => {
    await openPage("Nodes", "nodes");
    const r = await visible(page.locator('[data-testid=nodes-table] tr[data-node="console-test-node"]'));
    const t = await expectText("node row", r, /connected/);
    assert.match(t, /test-region/);
    await expectText("acked current", r.getByTestId("acked"), /current/);
    assert.match(t, /ago|just now/, "last report shown");
    await shot("nodes");
  });

  test("settings: a typed form, errors next to the field, saved with UpdateSettings", async () => {
    await openPage("Settings", "settings");
    const form = await visible(page.getByTestId("settings-form"));
    await form.locator("input[name=cooldown_max_seconds]").fill("0");
    await page.getByTestId("save-settings").click();
    await expectText("settings error", form.locator('[data-field="cooldown_max_seconds"] .field-error'), /must be at least 1 \(got 0\)/);
    await shot("settings-error");
    await form.locator("input[name=cooldown_max_seconds]").fill("900");
    await form.locator("input[name=near_recovery_wait_seconds]").fill("5");
    await page.getByTestId("save-settings").click();
    await expectText("saved", page.locator(".toast-ok").last(), /Settings saved/);
    const s = await cp.ctl("settings", "get");
    const settings = s.settings ?? s;
    assert.equal(settings.cooldown_max_seconds, 900);
    assert.equal(settings.near_recovery_wait_seconds, 5);
    await shot("settings");
  });

  test("settings: an admin creates a viewer token; its secret is shown once", async () => {
    await page.getByTestId("token-role").selectOption("viewer");
    await page.getByTestId("token-name").fill("console-test-viewer");
    await page.getByTestId("create-token").click();
    const dialog = await visible(page.getByTestId("token-dialog"));
    viewerToken = await dialog.getByTestId("token-secret").inputValue();
    assert.match(viewerToken, /^sct_[0-9a-f]{64}$/);
    await shot("token-created");
    await dialog.getByTestId("token-done").click();
    await dialog.waitFor({ state: "detached" });
    const r = await visible(page.locator('[data-testid=tokens-table] tr[data-token="console-test-viewer"]'));
    assert.match(await text(r), /viewer/);
    assert.ok(!(await page.content()).includes(viewerToken), "the secret is gone from the page");
  });

  test("settings: a node token is bound to a node id and region, and listed with them", async () => {
    assert.equal(await page.getByTestId("token-node").isVisible(), false, "node fields only for node tokens");
    await page.getByTestId("token-role").selectOption("node");
    await page.getByTestId("token-node").fill("edge-eu-1");
    await page.getByTestId("token-region").fill("eu");
    await page.getByTestId("create-token").click();
    const dialog = await visible(page.getByTestId("token-dialog"));
    const secret = await dialog.getByTestId("token-secret").inputValue();
    await dialog.getByTestId("token-done").click();
    await dialog.waitFor({ state: "detached" });
    const r = await visible(page.locator('[data-testid=tokens-table] tr[data-token="edge-eu-1"]'));
    assert.equal(await text(r.getByTestId("token-node-id")), "edge-eu-1 (eu)");
    const listed = await cp.ctl("token", "list");
    const t = listed.tokens.find((x) => x.name === "edge-eu-1");
    assert.equal(t.node_id, "edge-eu-1");
    assert.equal(t.region, "eu");
    assert.ok(!(await page.content()).includes(secret), "the secret is gone from the page");
  });

  test("settings: the pools in order with their spill policy; an admin switches primary to on_failure", async () => {
    const pools = await visible(page.getByTestId("pools-table"));
    const primary = await visible(pools.locator('tr[data-pool="primary"]'));
    const names = await pools.locator("tbody tr[data-pool]").evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-pool")));
    assert.deepEqual(names, ["primary", "fallback"], "pools in routing order");
    assert.equal(await text(primary.getByTestId("pool-backends")), "1", "mock-main is in primary");
    assert.equal(await text(pools.locator('tr[data-pool="fallback"]').getByTestId("pool-backends")), "0");
    assert.match(await text(page.getByTestId("spill-help")), /on_busy.*on_failure/s, "the two policies are explained");
    const spill = primary.getByTestId("pool-spill");
    assert.equal(await spill.inputValue(), "on_busy", "on_busy is the default");
    assert.match(await text(spill.locator("option:checked")), /^on_busy — overflow to the next pool$/);
    const save = primary.getByTestId("save-pool");
    assert.ok(await save.isDisabled(), "nothing to save before a change");
    await spill.selectOption("on_failure");
    assert.ok(await save.isEnabled(), "a change can be saved");
    await save.click();
    await expectText("pool saved", page.locator(".toast-ok").last(), /^Pool primary: spill on_failure \(config v\d+\)/);
    assert.ok(await save.isDisabled(), "saved: nothing left to save");
    await shot("settings-pools");

    // The server stored it (and only for primary).
    const list = await cp.ctl("pool", "list");
    const stored = Object.fromEntries((list.pools ?? list).map((p) => [p.name, p.spill]));
    assert.deepEqual(stored, { primary: 2, fallback: 1 }, "ON_FAILURE = 2, ON_BUSY = 1");

    // A reload of the page shows the stored value.
    await page.reload();
    await visible(page.locator(".page-settings"));
    const again = await visible(page.locator('[data-testid=pools-table] tr[data-pool="primary"]'));
    assert.equal(await again.getByTestId("pool-spill").inputValue(), "on_failure");
    assert.equal(await again.getAttribute("data-spill"), "on_failure");
    assert.equal(await page.locator('[data-testid=pools-table] tr[data-pool="fallback"]').getByTestId("pool-spill").inputValue(), "on_busy");
    await expectText("live after the reload", page.getByTestId("live-status"), /^live · config v\d+/);
  });

  test("values from the server are rendered as text, never as HTML", async () => {
    await openPage("Providers", "providers");
    await page.getByTestId("add-provider").click();
    const dialog = await visible(page.getByTestId("provider-dialog"));
    await dialog.locator("input[name=name]").fill("xss-probe");
    await dialog.locator("input[name=label]").fill(XSS_LABEL);
    await dialog.locator("input[name=base_url]").fill(mock.baseUrl);
    await dialog.locator("input[name=api_key]").fill("sk-other-key-000000");
    await dialog.locator("select[name=pool]").selectOption("fallback");
    const mapping = dialog.getByTestId("mapping-row").first();
    await mapping.getByTestId("mapping-canonical").fill(XSS_MODEL);
    await mapping.getByTestId("mapping-native").fill(XSS_META);
    await dialog.getByRole("button", { name: "Add entry" }).click();
    await dialog.getByTestId("meta-key").fill("note");
    await dialog.getByTestId("meta-value").fill(XSS_META);
    await dialog.getByTestId("save").click();
    await dialog.waitFor({ state: "detached" });
    const r = await visible(row("xss-probe"));
    assert.equal(await text(r.getByTestId("label")), XSS_LABEL);
    assert.equal(await text(r.getByTestId("models")), XSS_MODEL);
    // Reopen it: the stored values come back from the server into the form as text.
    await r.getByTestId("edit").click();
    const again = await visible(page.getByTestId("provider-dialog"));
    assert.equal(await again.getByTestId("meta-value").inputValue(), XSS_META);
    assert.equal(await again.getByTestId("mapping-native").first().inputValue(), XSS_META);
    await shot("provider-text-not-html");
    await again.getByRole("button", { name: "Cancel" }).click();
    await again.waitFor({ state: "detached" });
    const injected = await page.evaluate(() => ({
      img: document.querySelectorAll("main img, dialog img").length,
      bold: document.querySelectorAll("main b").length,
      scripts: [...document.scripts].filter((s) => !s.src).length,
      xss: window.__xss ?? null,
    }));
    assert.deepEqual(injected, { img: 0, bold: 0, scripts: 0, xss: null });
    assert.deepEqual(dialogs, [], "no alert/confirm fired");
  });

  test("deleting asks for confirmation", async () => {
    const r = row("xss-probe");
    await r.getByTestId("delete").click();
    const confirm = await visible(page.getByTestId("confirm"));
    assert.match(await text(confirm), /Delete provider “xss-probe”\?/);
    await shot("delete-confirm");
    await page.getByTestId("confirm-no").click();
    await confirm.waitFor({ state: "detached" });
    assert.ok(await r.isVisible(), "cancel keeps it");
    await r.getByTestId("delete").click();
    await visible(page.getByTestId("confirm"));
    await page.getByTestId("confirm-yes").click();
    await r.waitFor({ state: "detached" });
    await expectText("toast", page.locator(".toast-ok").last(), /Deleted xss-probe/);
    const list = await cp.ctl("backend", "list");
    const names = (list.backends ?? list).map((b) => b.name);
    assert.deepEqual(names, ["mock-main"]);
  });

  test("a lower limit the provider reports shows as “limit learned” on the providers page", async () => {
    // A second provider whose answers say, in OpenAI's headers, that the key allows 10
    // requests per minute; the backend is configured with 600.
    learnMock = await new MockUpstream(KEY).start();
    learnMock.answerHeaders({ "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9", "x-ratelimit-reset-requests": "6s" });
    await cp.ctl("backend", "add", "--name", "mock-learn", "--base-url", learnMock.baseUrl, "--api-key", KEY, "--rpm", "600", "--model", "gpt-learn=mock-small");
    await openPage("Providers", "providers");
    const r = await visible(row("mock-learn"));
    assert.equal(await r.getByTestId("limit-learned").count(), 0, "nothing learned before an answer");
    assert.equal(await text(r.getByTestId("rpm")), "600");

    // One answer through the proxy (once it has the backend) carries the headers.
    await waitFor("a 200 from mock-learn through the proxy", async () => (await proxy.chat("gpt-learn")) === 200, { timeout: 10_000 });
    assert.equal(learnMock.chatCalls().at(-1)?.status, 200, "the new provider answered");
    await expectText("learned limit", r.getByTestId("limit-learned"), (t) => t === "limit learned: 10 RPM");
    assert.match(await text(r.getByTestId("rpm")), /^600/, "the configured limit is still shown");
    const b = await cp.ctl("backend", "get", "mock-learn");
    const backend = b.backend ?? b;
    assert.equal(backend.learned_rpm_limit, 10, "the control plane recorded it");
    assert.equal(backend.rpm_limit, 600, "a learned limit never changes the configured one");
    assert.equal(await row("mock-main").getByTestId("limit-learned").count(), 0, "only the backend whose provider said so");
    await shot("providers-limit-learned");

    // Gone again, so the rest of the session sees only mock-main.
    await cp.ctl("backend", "rm", "mock-learn");
    await r.waitFor({ state: "detached" });
  });

  test("a viewer sees everything but every write control is disabled (and the server refuses)", async () => {
    assert.ok(viewerToken, "a viewer token was created on the Settings page");
    await signOut();
    await signIn(viewerToken);
    await expectText("viewer badge", page.getByTestId("role"), /viewer · read-only/);
    await openPage("Providers", "providers");
    await visible(row("mock-main"));
    const writes = page.locator("[data-write]");
    assert.ok((await writes.count()) >= 3);
    for (const b of await writes.all()) assert.ok(await b.isDisabled(), `${await b.textContent()} is disabled`);
    // The details are there to read.
    await row("mock-main").getByTestId("edit").click();
    const dialog = await visible(page.getByTestId("provider-dialog"));
    assert.equal(await dialog.locator("input[name=name]").inputValue(), "mock-main");
    assert.ok(await dialog.locator("input[name=rpm_limit]").isDisabled());
    assert.ok(await dialog.getByTestId("save").isDisabled());
    await shot("viewer-provider");
    await dialog.getByRole("button", { name: "Close" }).first().click();
    await dialog.waitFor({ state: "detached" });
    await shot("viewer-providers");

    await openPage("Settings", "settings");
    const form = await visible(page.getByTestId("settings-form"));
    assert.ok(await form.locator("input[name=queue_capacity]").isDisabled());
    assert.ok(await page.getByTestId("save-settings").isDisabled());
    await visible(page.locator('[data-testid=tokens-table] tr[data-token="console-test-viewer"]'));
    // The pools' spill policy is shown (as saved by the admin) but cannot be changed.
    const poolSpill = (await visible(page.locator('[data-testid=pools-table] tr[data-pool="primary"]'))).getByTestId("pool-spill");
    assert.equal(await poolSpill.inputValue(), "on_failure");
    assert.ok(await poolSpill.isDisabled(), "the spill select is disabled for a viewer");
    assert.ok(await page.locator('[data-testid=pools-table] tr[data-pool="primary"]').getByTestId("save-pool").isDisabled());
    assert.ok((await page.locator("[data-testid=pools-table] [data-write]").count()) >= 4, "the pool controls are write controls");
    for (const b of await page.locator("[data-write]").all()) assert.ok(await b.isDisabled(), `${await b.textContent()} is disabled`);
    // Forced past the disabled controls, the server still refuses.
    await page.evaluate(() => {
      for (const el of document.querySelectorAll(".settings-form input, .settings-form button")) el.disabled = false;
    });
    await form.locator("input[name=queue_capacity]").fill("123");
    await page.getByTestId("save-settings").click();
    await expectText("refused", page.getByTestId("form-error"), /Not allowed: .*viewer may only read/);
    await shot("viewer-settings-refused");
  });

  test("a viewer sees the keys but cannot change them (and the server refuses)", async () => {
    await openPage("Keys", "keys");
    const r = await visible(keyRow("ci-runner"));
    assert.match(await text(r.getByTestId("key-prefix")), /^sk-sc-[A-Za-z0-9]{4}…$/);
    assert.equal(await text(r.getByTestId("key-state")), "active");
    assert.equal(await text(r.getByTestId("key-team")), "platform");
    assert.equal(await text(r.getByTestId("key-models")), "all");
    const writes = page.locator("[data-write]");
    assert.ok((await writes.count()) >= 5, "Create key and the row's four actions");
    for (const b of await writes.all()) assert.ok(await b.isDisabled(), `${await b.textContent()} is disabled`);
    // Reading revoked keys is open to viewers.
    await page.getByTestId("show-revoked").check();
    await expectText("revoked key listed", keyRow("billing-agent").getByTestId("key-state"), /^revoked$/);
    await page.getByTestId("show-revoked").uncheck();
    await shot("viewer-keys");
    // Forced past the disabled button, the server still refuses.
    await r.getByTestId("key-toggle").evaluate((b) => (b.disabled = false));
    await r.getByTestId("key-toggle").click();
    await expectText("refused", page.locator(".toast-error").last(), /Not allowed: .*viewer may only read/);
    const [k] = (await cp.ctl("key", "list")).keys;
    assert.equal(k.enabled, true, "still enabled");
  });

  test("usable on a narrow screen", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [title, cls] of [
      ["Dashboard", "dashboard"],
      ["Providers", "providers"],
      ["Keys", "keys"],
      ["Usage", "usage"],
    ]) {
      await openPage(title, cls);
      if (cls === "providers") await visible(row("mock-main"));
      if (cls === "keys") await visible(keyRow("ci-runner"));
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `${title} overflows the viewport by ${overflow}px`);
      await shot(`narrow-${cls}`);
    }
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  test("no script errors or Content-Security-Policy violations in the page", () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(consoleErrors, []);
  });

  test("the disconnected banner shows after 5 s without data and goes away on reconnect", async () => {
    await openPage("Dashboard", "dashboard");
    const banner = page.getByTestId("disconnected-banner");
    await expectText("live", page.getByTestId("live-status"), /^live/);
    const stopped = Date.now();
    const stopping = cp.stop();
    assert.equal(await banner.isVisible(), false, "no banner right away");
    await stopping;
    await visible(banner, 15_000);
    const after = Date.now() - stopped;
    assert.ok(after >= 4000, `the banner came after ${after} ms, before 5 s of silence`);
    assert.match(await text(banner), /Disconnected — reconnecting/);
    await expectText("offline", page.getByTestId("live-status"), /^offline$/);
    await shot("disconnected");
    await cp.start();
    await banner.waitFor({ state: "hidden", timeout: 20_000 });
    await expectText("live again", page.getByTestId("live-status"), /^live/);
  });
});
