// Test harness: a real control plane and proxy (the debug binaries, on free ports, with
// temporary data directories) and a scriptable mock upstream written in Node.

import { spawn, execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const webUi = path.resolve(here, "..");
export const repoRoot = path.resolve(webUi, "..");
export const resultsDir = path.join(webUi, "test-results");
export const binDir = process.env.SIDECAR_BIN_DIR ? path.resolve(process.env.SIDECAR_BIN_DIR) : path.join(repoRoot, "target", "debug");

const children = new Set();
function killChildren() {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
}
process.on("exit", killChildren);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    killChildren();
    process.exit(130);
  });
}

export function hex(bytes) {
  return randomBytes(bytes).toString("hex");
}

/** A port that was free a moment ago (bound to port 0, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeout` ms. */
export async function waitFor(what, fn, { timeout = 15_000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

function checkBinary(name) {
  const p = path.join(binDir, name);
  if (!fs.existsSync(p)) {
    throw new Error(`${p} is missing; build it with: cargo build -p sidecar-control-plane -p sidecar-data-plane --bins`);
  }
  return p;
}

function startProcess(name, bin, args, env, logFile) {
  const log = fs.openSync(logFile, "a");
  const child = spawn(bin, args, {
    env: { PATH: process.env.PATH, HOME: process.env.HOME ?? os.tmpdir(), SIDECAR_LOG_LEVEL: "info", ...env },
    stdio: ["ignore", log, log],
  });
  fs.closeSync(log);
  children.add(child);
  child.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  child.exited.then(() => children.delete(child));
  child.label = name;
  return child;
}

async function stopProcess(child, signal = "SIGTERM", timeout = 10_000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const t = setTimeout(() => child.kill("SIGKILL"), timeout);
  await child.exited;
  clearTimeout(t);
}

/**
 * A mock OpenAI-compatible upstream: POST /v1/chat/completions answers an OpenAI-shaped
 * completion with usage (10 prompt + 5 completion tokens); GET /v1/models answers 200 for
 * the valid key and 401 otherwise. `rateLimit(seconds)` makes chat calls answer 429 with
 * Retry-After until `rateLimit(0)`; `answerHeaders(headers)` adds headers (such as the
 * provider's `x-ratelimit-*`) to every completion from then on.
 */
export class MockUpstream {
  constructor(validKey) {
    this.validKey = validKey;
    this.retryAfter = 0;
    this.extraHeaders = {};
    this.calls = [];
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = this.server.address().port;
    this.baseUrl = `http://127.0.0.1:${this.port}/v1`;
    return this;
  }

  rateLimit(retryAfterSeconds) {
    this.retryAfter = retryAfterSeconds;
  }

  answerHeaders(headers) {
    this.extraHeaders = { ...headers };
  }

  chatCalls() {
    return this.calls.filter((c) => c.path === "/v1/chat/completions");
  }

  handle(req, res) {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const url = new URL(req.url, "http://mock");
      const call = { method: req.method, path: url.pathname, authorization: req.headers.authorization ?? "", body, status: 0 };
      this.calls.push(call);
      const send = (status, json, headers = {}) => {
        call.status = status;
        res.writeHead(status, { "content-type": "application/json", ...headers });
        res.end(JSON.stringify(json));
      };
      const keyOk = call.authorization === `Bearer ${this.validKey}`;
      const unauthorized = () =>
        send(401, { error: { message: "Incorrect API key provided.", type: "invalid_request_error", code: "invalid_api_key" } });
      if (req.method === "GET" && url.pathname === "/v1/models") {
        if (!keyOk) return unauthorized();
        return send(200, {
          object: "list",
          data: [
            { id: "mock-large", object: "model", owned_by: "mock" },
            { id: "mock-small", object: "model", owned_by: "mock" },
          ],
        });
      }
      if (req.method === "POST" && url.pathname === "/v1/chat/completions") {
        if (!keyOk) return unauthorized();
        if (this.retryAfter > 0) {
          return send(
            429,
            { error: { message: "Rate limit reached for requests", type: "requests", code: "rate_limit_exceeded" } },
            { "retry-after": String(this.retryAfter) },
          );
        }
        let model = "unknown";
        try {
          model = JSON.parse(body).model ?? model;
        } catch {
          /* not JSON */
        }
        return send(
          200,
          {
            id: `chatcmpl-${hex(6)}`,
            object: "chat.completion",
            created: Math.floor(Date.now() / 1000),
            model,
            choices: [{ index: 0, message: { role: "assistant", content: "Hello from the mock." }, finish_reason: "stop" }],
            usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 },
          },
          this.extraHeaders,
        );
      }
      send(404, { error: { message: `no route ${req.method} ${url.pathname}`, type: "invalid_request_error" } });
    });
  }

  async stop() {
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** A control plane process serving the built console. */
export class ControlPlane {
  constructor({ consoleDir, logDir }) {
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "sidecar-console-cp-"));
    this.encryptionKey = hex(32);
    this.adminToken = `sct_admin_${hex(16)}`;
    this.nodeToken = `sct_node_${hex(16)}`;
    this.consoleDir = consoleDir;
    this.logFile = path.join(logDir, "control-plane.log");
  }

  async start() {
    if (!this.port) this.port = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.child = startProcess(
      "control plane",
      checkBinary("sidecar-control"),
      ["--listen", `127.0.0.1:${this.port}`, "--ops-listen", "127.0.0.1:0", "--console-dir", this.consoleDir],
      {
        SIDECAR_ENCRYPTION_KEY: this.encryptionKey,
        SIDECAR_ADMIN_TOKEN: this.adminToken,
        SIDECAR_NODE_TOKEN: this.nodeToken,
        SIDECAR_DATA_DIR: this.dataDir,
      },
      this.logFile,
    );
    let exited = false;
    this.child.exited.then(() => (exited = true));
    await waitFor(`the control plane on ${this.url}`, async () => {
      if (exited) throw new Error(`it exited; see ${this.logFile}`);
      const r = await fetch(`${this.url}/`);
      return r.ok && (await r.text()).includes('id="app"');
    });
    return this;
  }

  async stop(signal = "SIGTERM") {
    await stopProcess(this.child, signal);
  }

  /** Runs sidecarctl against this control plane with the admin token; returns parsed JSON. */
  ctl(...args) {
    return new Promise((resolve, reject) => {
      execFile(
        checkBinary("sidecarctl"),
        ["--server", this.url, "--token", this.adminToken, "-o", "json", ...args],
        { env: { PATH: process.env.PATH } },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`sidecarctl ${args.join(" ")}: ${stderr || err.message}`));
          else resolve(JSON.parse(stdout));
        },
      );
    });
  }

  cleanup() {
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A proxy process connected to the control plane. */
export class Proxy {
  constructor({ controlPlane, logDir }) {
    this.cp = controlPlane;
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "sidecar-console-proxy-"));
    this.logFile = path.join(logDir, "proxy.log");
  }

  async start() {
    this.port = await freePort();
    this.opsPort = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.child = startProcess(
      "proxy",
      checkBinary("sidecar-proxy"),
      [],
      {
        SIDECAR_CONTROL_URL: this.cp.url,
        SIDECAR_NODE_TOKEN: this.cp.nodeToken,
        SIDECAR_DATA_DIR: this.dataDir,
        SIDECAR_PORT: String(this.port),
        SIDECAR_OPS_LISTEN: `127.0.0.1:${this.opsPort}`,
        SIDECAR_NODE_ID: "console-test-node",
        SIDECAR_REGION: "test-region",
      },
      this.logFile,
    );
    let exited = false;
    this.child.exited.then(() => (exited = true));
    await waitFor("the proxy to get its config", async () => {
      if (exited) throw new Error(`it exited; see ${this.logFile}`);
      const r = await fetch(`http://127.0.0.1:${this.opsPort}/health/ready`);
      return r.ok;
    });
    return this;
  }

  /** POST /v1/chat/completions through the proxy, with a client key (sk-sc-…) if given. */
  async chat(model, key) {
    const r = await fetch(`${this.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
    });
    await r.arrayBuffer();
    return r.status;
  }

  async stop() {
    await stopProcess(this.child);
  }

  cleanup() {
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}
