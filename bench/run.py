"""Benchmark orchestrator: starts the mock upstream, nginx, the control plane and a proxy,
runs each scenario several times and reports medians side by side.

Usage: bench/run.sh [--runs 3] [--duration 10] [--rate 10000] [--streams 10000] [--quick]
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
ADMIN = "bench-admin-token-0123456789"
NODE = "bench-node-token-0123456789"
KEY = "ab" * 32
UP, UP_SLOW, UP_STREAM, NGINX, NGINX_STREAM, PROXY, PROXY_OPS, CTRL, CTRL_OPS = 18000, 18001, 18002, 18100, 18101, 18200, 18201, 18290, 18291
FLOOR, FLOOR_SLOW = 18300, 18301
PROXY_TLS, PROXY_TLS_OPS = 18210, 18211
PROXY_BASE, PROXY_BASE_OPS = 18220, 18221
BODY = '{"model":"bench","messages":[{"role":"user","content":"hello"}]}'

procs = []


def start(cmd, env=None, name=None):
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's RSS every 100 ms; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0.0, True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while self.running:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.1)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def unit(value, suffix):
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[suffix]
    return float(value) * scale


def wrk(url, conns, duration, lua):
    threads = max(1, min(conns, 2))
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", lua, url],
        capture_output=True, text=True, check=True,
    ).stdout
    lat = {}
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[q] = unit(*m.groups()) if m else float("nan")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"p50_ms": lat["50"], "p99_ms": lat["99"], "rps": rps, "errors": int(non2xx.group(1)) if non2xx else 0}


def oha_path():
    local = os.path.join(ROOT, "target", "bench-tools", "bin", "oha")
    return local if os.path.exists(local) else shutil.which("oha")


def oha(url, conns, rate, duration):
    """Open loop: `rate` requests a second spread over `conns` connections, latency measured
    from when each request was due (corrected for coordinated omission)."""
    out = subprocess.run(
        [oha_path(), "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-c", str(conns), "-q", str(rate),
         "--latency-correction", "-m", "POST", "-T", "application/json", "-d", BODY,
         *(["--insecure"] if url.startswith("https") else []), url],
        capture_output=True, text=True, check=True,
    ).stdout
    d = json.loads(out)
    codes = d.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    return {"p50_ms": d["latencyPercentiles"]["p50"] * 1000, "p99_ms": d["latencyPercentiles"]["p99"] * 1000,
            "rps": d["summary"]["requestsPerSec"], "non200": sum(int(v) for v in codes.values()) - ok}


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def sidecarctl(*args):
    env = {"SIDECAR_TOKEN": ADMIN, "SIDECAR_CONTROL_URL": f"http://127.0.0.1:{CTRL}"}
    subprocess.run([os.path.join(REL, "sidecarctl"), *args], env={**os.environ, **env}, check=True, capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="1 run of 3 s, fewer streams: a smoke test")
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=10000, help="requests/s of the fixed-rate latency scenario")
    ap.add_argument("--conns", default="1,16,64,256", help="comma-separated connection counts of the chat scenario")
    ap.add_argument("--chat-only", action="store_true", help="only the chat and fixed-rate scenarios")
    ap.add_argument("--streams-only", action="store_true",
                    help="only the streaming scenarios (chat and messages: time to first byte, frames)")
    ap.add_argument("--baseline-proxy", metavar="BIN",
                    help="another sidecar-proxy binary (e.g. built from the previous commit) measured in the same run")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.duration, args.streams = 1, 3, 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The proxy holds two descriptors per stream (client and upstream).
    if hard < 2 * args.streams + 200:
        args.streams = max(100, hard // 2 - 200)
        print(f"open-file limit {hard}: holding {args.streams} streams instead", flush=True)
    work = tempfile.mkdtemp(prefix="sidecar-bench-")
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        # Upstreams: a fast one, and a slow one for the open-streams scenario.
        start([os.path.join(REL, "bench-upstream"), "--addr", f"127.0.0.1:{UP}", "--chunks", "50"])
        start([os.path.join(REL, "bench-upstream"), "--addr", f"127.0.0.1:{UP_SLOW}", "--chunks", "60", "--chunk-interval-ms", "1000"])
        # Streams whose chunks are 2 ms apart, so coalescing or delay would show.
        start([os.path.join(REL, "bench-upstream"), "--addr", f"127.0.0.1:{UP_STREAM}", "--chunks", "50", "--chunk-interval-ms", "2"])
        # nginx: a plain reverse proxy with upstream keep-alive.
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 2; daemon off; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 65536; }}
http {{ access_log off; upstream up {{ server 127.0.0.1:{UP}; keepalive 256; }}
  upstream stream {{ server 127.0.0.1:{UP_STREAM}; keepalive 64; }}
  server {{ listen 127.0.0.1:{NGINX}; location / {{ proxy_pass http://up; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; }} }}
  server {{ listen 127.0.0.1:{NGINX_STREAM}; location / {{ proxy_pass http://stream; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; }} }} }}
""")
        nginx = start(["nginx", "-c", conf, "-p", work])
        # The floor for a proxy built on hyper: the same runtime layout as sidecar-proxy,
        # nothing else (bench/src/bin/bench-hyper-floor.rs).
        floor = start([os.path.join(REL, "bench-hyper-floor"), "--listen", f"127.0.0.1:{FLOOR}", "--upstream", f"127.0.0.1:{UP}"])
        floor_slow = start([os.path.join(REL, "bench-hyper-floor"), "--listen", f"127.0.0.1:{FLOOR_SLOW}", "--upstream", f"127.0.0.1:{UP_SLOW}"])
        # Control plane + proxy; three backends in two pools, limits far above the load.
        cp = start(
            [os.path.join(REL, "sidecar-control"), "--listen", f"127.0.0.1:{CTRL}", "--ops-listen", f"127.0.0.1:{CTRL_OPS}"],
            {"SIDECAR_ENCRYPTION_KEY": KEY, "SIDECAR_ADMIN_TOKEN": ADMIN, "SIDECAR_NODE_TOKEN": NODE,
             "SIDECAR_DATA_DIR": os.path.join(work, "control"), "SIDECAR_LOG_LEVEL": "warn"},
        )
        for port in (UP, UP_SLOW, UP_STREAM, NGINX, NGINX_STREAM, CTRL, FLOOR, FLOOR_SLOW):
            wait_port(port)
        sidecarctl("settings", "set", "bucket_burst=1000", "queue_capacity=100000", "queue_timeout_seconds=600")
        for name, pool in (("b1", "primary"), ("b2", "primary"), ("b3", "fallback")):
            sidecarctl("backend", "add", "--name", name, "--base-url", f"http://127.0.0.1:{UP}/v1", "--api-key", "sk-bench-0123456789",
                       "--pool", pool, "--rpm", "100000000", "--model", "bench")
        sidecarctl("backend", "add", "--name", "stream", "--base-url", f"http://127.0.0.1:{UP_STREAM}/v1", "--api-key", "sk-bench-0123456789",
                   "--rpm", "100000000", "--model", "stream")
        sidecarctl("backend", "add", "--name", "stream-claude", "--base-url", f"http://127.0.0.1:{UP_STREAM}/v1",
                   "--api-key", "sk-bench-0123456789", "--api", "anthropic", "--rpm", "100000000", "--model", "claude-stream")
        sidecarctl("backend", "add", "--name", "slow", "--base-url", f"http://127.0.0.1:{UP_SLOW}/v1", "--api-key", "sk-bench-0123456789",
                   "--rpm", "100000000", "--model", "slow", "--timeout", "600")
        proxy = start(
            [os.path.join(REL, "sidecar-proxy")],
            {"SIDECAR_CONTROL_URL": f"http://127.0.0.1:{CTRL}", "SIDECAR_NODE_TOKEN": NODE, "SIDECAR_PORT": str(PROXY),
             "SIDECAR_OPS_LISTEN": f"127.0.0.1:{PROXY_OPS}", "SIDECAR_DATA_DIR": os.path.join(work, "proxy"), "SIDECAR_LOG_LEVEL": "warn"},
        )
        # A second proxy serving its API over HTTPS (a self-signed certificate made here),
        # so what TLS costs per request is measured against the plaintext proxy in the
        # same run. wrk keeps connections alive, as SDK clients do: the handshake is paid
        # once per connection.
        cert, key = os.path.join(work, "proxy-cert.pem"), os.path.join(work, "proxy-key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
        proxy_tls = start(
            [os.path.join(REL, "sidecar-proxy")],
            {"SIDECAR_CONTROL_URL": f"http://127.0.0.1:{CTRL}", "SIDECAR_NODE_TOKEN": NODE, "SIDECAR_PORT": str(PROXY_TLS),
             "SIDECAR_OPS_LISTEN": f"127.0.0.1:{PROXY_TLS_OPS}", "SIDECAR_DATA_DIR": os.path.join(work, "proxy-tls"),
             "SIDECAR_LOG_LEVEL": "warn", "SIDECAR_TLS_CERT": cert, "SIDECAR_TLS_KEY": key},
        )
        base = None
        if args.baseline_proxy:
            base = start(
                [args.baseline_proxy],
                {"SIDECAR_CONTROL_URL": f"http://127.0.0.1:{CTRL}", "SIDECAR_NODE_TOKEN": NODE, "SIDECAR_PORT": str(PROXY_BASE),
                 "SIDECAR_OPS_LISTEN": f"127.0.0.1:{PROXY_BASE_OPS}", "SIDECAR_DATA_DIR": os.path.join(work, "proxy-base"),
                 "SIDECAR_LOG_LEVEL": "warn"},
            )
            wait_port(PROXY_BASE)
        wait_port(PROXY)
        wait_port(PROXY_TLS)
        time.sleep(1.5)  # first snapshot and grants
        lua = os.path.join(work, "post.lua")
        with open(lua, "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\nwrk.headers["Content-Type"] = "application/json"\n')
        systems = {
            "mock (direct)": f"http://127.0.0.1:{UP}/v1/chat/completions",
            "nginx": f"http://127.0.0.1:{NGINX}/v1/chat/completions",
            "hyper floor": f"http://127.0.0.1:{FLOOR}/v1/chat/completions",
            "sidecar-proxy": f"http://127.0.0.1:{PROXY}/v1/chat/completions",
            "sidecar-proxy https": f"https://127.0.0.1:{PROXY_TLS}/v1/chat/completions",
        }
        nginx_workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True).stdout.split()]
        # Whose CPU time is the system's: the processes that serve its requests.
        serving = {"mock (direct)": [procs[0].pid], "nginx": nginx_workers, "hyper floor": [floor.pid], "sidecar-proxy": [proxy.pid],
                   "sidecar-proxy https": [proxy_tls.pid]}
        if args.baseline_proxy:
            systems["sidecar-proxy baseline"] = f"http://127.0.0.1:{PROXY_BASE}/v1/chat/completions"
            serving["sidecar-proxy baseline"] = [base.pid]
        if not args.streams_only:
            # Warm up every path.
            for url in systems.values():
                wrk(url, 16, 2, lua)

            results["chat"] = {}
            for conns in [int(c) for c in args.conns.split(",")]:
                row = {}
                # Runs alternate between systems, so drift on the machine touches all alike.
                runs_of = {name: [] for name in systems}
                for _ in range(args.runs):
                    for name, url in systems.items():
                        runs = runs_of[name]
                        sampler = RssSampler(serving[name][0]) if name.startswith("sidecar-proxy") else None
                        cpu0 = sum(cpu_seconds(pid) for pid in serving[name])
                        r = wrk(url, conns, args.duration, lua)
                        cpu = sum(cpu_seconds(pid) for pid in serving[name]) - cpu0
                        # CPU per request of the serving processes (the mock's own share is
                        # in the "mock (direct)" row).
                        r["cpu_us"] = cpu * 1e6 / max(1.0, r["rps"] * args.duration)
                        if sampler:
                            r["rss_mb"] = sampler.stop()
                        runs.append(r)
                for name, runs in runs_of.items():
                    row[name] = {k: median_of(runs, k) for k in runs[0]}
                    print(f"c={conns:<4} {name:<14} p50 {row[name]['p50_ms']:.3f} ms  p99 {row[name]['p99_ms']:.3f} ms  {row[name]['rps']:.0f} req/s  {row[name]['cpu_us']:.1f} µs CPU/req"
                          + (f"  rss {row[name]['rss_mb']:.1f} MB" if 'rss_mb' in row[name] else ""), flush=True)
                results["chat"][conns] = row

            # Latency at a fixed rate, below every system's capacity, over 64 connections: what
            # a proxy adds per request when it is not also competing for the CPU at saturation.
            results["fixed_rate"] = {"rate": args.rate, "conns": 64, "rows": {}}
            for name, url in systems.items():
                runs = [oha(url, 64, args.rate, args.duration) for _ in range(args.runs)]
                row = results["fixed_rate"]["rows"][name] = {k: median_of(runs, k) for k in runs[0]}
                print(f"fixed {args.rate}/s c=64 {name:<14} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
                      f"{row['rps']:.0f} req/s  {row['non200']:.0f} non-200", flush=True)
        if args.chat_only:
            return finish(results, args)

        results["stream"] = {}
        stream_urls = {
            "mock (direct)": f"http://127.0.0.1:{UP_STREAM}/v1/chat/completions",
            "nginx": f"http://127.0.0.1:{NGINX_STREAM}/v1/chat/completions",
            "sidecar-proxy": f"http://127.0.0.1:{PROXY}/v1/chat/completions",
        }
        for name, url in stream_urls.items():
            out = subprocess.run([os.path.join(REL, "bench-stream"), "--url", url, "--model", "stream", "--requests", "100"],
                                 capture_output=True, text=True, check=True)
            results["stream"][name] = json.loads(out.stdout)
            print(f"stream {name:<14} {results['stream'][name]}", flush=True)
        # The same through Anthropic's Messages API (named SSE events; usage read from
        # message_start and message_delta on the way).
        results["messages_stream"] = {}
        for name, url in (("mock (direct)", f"http://127.0.0.1:{UP_STREAM}/v1/messages"),
                          ("sidecar-proxy", f"http://127.0.0.1:{PROXY}/v1/messages")):
            out = subprocess.run([os.path.join(REL, "bench-stream"), "--url", url, "--model", "claude-stream", "--requests", "100",
                                  "--anthropic"], capture_output=True, text=True, check=True)
            results["messages_stream"][name] = json.loads(out.stdout)
            print(f"messages stream {name:<14} {results['messages_stream'][name]}", flush=True)
        if args.streams_only:
            return finish(results, args)

        results["open_streams"] = {}
        for name, pid, url in (("sidecar-proxy", proxy.pid, systems["sidecar-proxy"]),
                               ("hyper floor", floor_slow.pid, f"http://127.0.0.1:{FLOOR_SLOW}/v1/chat/completions")):
            base_rss = rss_mb(pid)
            sampler = RssSampler(pid)
            out = subprocess.run(
                [os.path.join(REL, "bench-stream"), "--url", url, "--model", "slow", "--hold", str(args.streams), "--hold-secs", "20"],
                capture_output=True, text=True, check=True,
            )
            held = json.loads(out.stdout)
            results["open_streams"][name] = {**held, "rss_peak_mb": sampler.stop(), "rss_before_mb": base_rss}
            print(f"open streams {name} {results['open_streams'][name]}", flush=True)
            time.sleep(2)  # let the held streams close

        # What the slow-client defences cost per request (baseline and feature in one run).
        out = subprocess.run([os.path.join(REL, "bench-hardening"), *(["--rounds", "5"] if args.quick else [])],
                             capture_output=True, text=True, check=True)
        results["hardening"] = json.loads(out.stdout)
        print(f"hardening {results['hardening']}", flush=True)

        # What a model's own limits (a second bucket) cost per request, baseline and
        # feature in one run.
        out = subprocess.run([os.path.join(REL, "bench-model-limits"), *(["--rounds", "5"] if args.quick else [])],
                             capture_output=True, text=True, check=True)
        results["model_limits"] = json.loads(out.stdout)
        print(f"model limits {results['model_limits']}", flush=True)

        fleet = [os.path.join(REL, "bench-fleet"), "--control", f"http://127.0.0.1:{CTRL}", "--admin-token", ADMIN, "--node-token", NODE]
        out = subprocess.run([*fleet, "propagation", "--nodes", "50", "--writes", "20"], capture_output=True, text=True, check=True)
        results["propagation"] = json.loads(out.stdout)
        print(f"propagation {results['propagation']}", flush=True)

        seconds = 10 if args.quick else 30
        cpu0, t0 = cpu_seconds(cp.pid), time.time()
        out = subprocess.run([*fleet, "ingest", "--nodes", "500", "--seconds", str(seconds)], capture_output=True, text=True, check=True)
        cores = (cpu_seconds(cp.pid) - cpu0) / (time.time() - t0)
        results["ingest"] = {**json.loads(out.stdout), "control_plane_cores": cores}
        print(f"ingest {results['ingest']}", flush=True)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    finish(results, args)


def finish(results, args):
    """Writes the results (JSON and Markdown) and prints the report."""
    results["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release(), "cpu": cpu_model()}
    report = render(results, args)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(os.path.join(ROOT, "bench", "results", f"{stamp}.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(ROOT, "bench", "results", f"{stamp}.md"), "w") as f:
        f.write(report)
    print(report)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def render(r, args):
    lines = [f"Run {r['date']} on {r['machine']['cpus']} CPUs ({r['machine']['cpu']}), kernel {r['machine']['kernel']}; "
             f"{args.runs} runs of {args.duration} s per cell, medians.", ""]
    if r.get("chat"):
        lines.append("| concurrency | system | p50 ms | p99 ms | req/s | added p50 ms | added p99 ms | CPU µs/req | RSS MB |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for conns, row in r["chat"].items():
            direct = row["mock (direct)"]
            for name, v in row.items():
                added = (v["p50_ms"] - direct["p50_ms"], v["p99_ms"] - direct["p99_ms"]) if name != "mock (direct)" else None
                lines.append(f"| {conns} | {name} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['rps']:.0f} | "
                             + (f"{added[0]:.3f} | {added[1]:.3f}" if added else "– | –") + f" | {v['cpu_us']:.1f}"
                             + f" | {v.get('rss_mb', 0):.1f} |".replace("| 0.0 |", "| – |"))
        lines.append("")
        fixed = r["fixed_rate"]
        lines.append(f"| fixed rate: {fixed['rate']} req/s over {fixed['conns']} connections (oha, latency-corrected) | p50 ms | p99 ms | added p50 ms | added p99 ms | non-200 answers |")
        lines.append("|---|---|---|---|---|---|")
        direct = fixed["rows"]["mock (direct)"]
        for name, v in fixed["rows"].items():
            added = f"{v['p50_ms'] - direct['p50_ms']:.3f} | {v['p99_ms'] - direct['p99_ms']:.3f}" if name != "mock (direct)" else "– | –"
            lines.append(f"| {name} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {added} | {v['non200']:.0f} |")
        lines.append("")
    if "stream" not in r:
        return "\n".join(lines)
    lines.append("| streaming (50 chunks, 2 ms apart) | TTFB p50 µs | TTFB p99 µs | frames per response (median) |")
    lines.append("|---|---|---|---|")
    for name, v in r["stream"].items():
        lines.append(f"| {name} | {v['ttfb_p50_us']:.0f} | {v['ttfb_p99_us']:.0f} | {v['frames_median']} |")
    for name, v in r.get("messages_stream", {}).items():
        lines.append(f"| Anthropic messages: {name} | {v['ttfb_p50_us']:.0f} | {v['ttfb_p99_us']:.0f} | {v['frames_median']} |")
    if "propagation" not in r:
        return "\n".join(lines)
    p, i = r["propagation"], r["ingest"]
    h = r.get("hardening")
    if h:
        lines += ["", f"Slow-client defences per request (bench-hardening, {h['rounds']} alternating rounds of {h['ops']}, medians): "
                  f"reading a {len(BODY)}-byte body takes {h['body_read_ns']:.0f} ns bare and {h['body_read_with_timeout_ns']:.0f} ns under the "
                  f"body timeout (+{h['body_timeout_ns']:.0f} ns); the declared Content-Length check {h['content_length_check_ns']:.0f} ns; "
                  f"a connection slot {h['connection_slot_ns']:.0f} ns per connection."]
    ml = r.get("model_limits")
    if ml:
        lines += ["", f"A model's own limits per request (bench-model-limits, {ml['rounds']} alternating rounds of {ml['ops']}, medians): "
                  f"taking and giving back a token takes {ml['take_ns']:.0f} ns from a backend alone and "
                  f"{ml['take_with_model_bucket_ns']:.0f} ns with the model's bucket beside it (+{ml['model_bucket_ns']:.0f} ns); "
                  f"reading the provider's rate-limit headers takes {ml['limit_headers_absent_ns']:.0f} ns on a response without them "
                  f"and {ml['limit_headers_present_ns']:.0f} ns on one with OpenAI's six."]
    lines.append("")
    for name, o in r["open_streams"].items():
        per = (o["rss_peak_mb"] - o["rss_before_mb"]) * 1024 / max(1, o["ok"])
        lines.append(f"Open slow streams through {name}: {o['ok']} of {o['held']} held for 20 s; RSS {o['rss_before_mb']:.1f} MB before, "
                     f"peak {o['rss_peak_mb']:.1f} MB ({per:.1f} KB per stream; at that rate 10,000 streams take {o['rss_before_mb'] + per * 10000 / 1024:.0f} MB).")
    lines += ["",
              f"Config propagation to {p['nodes']} nodes over {p['writes']} writes (admin write → node ACK): p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms.",
              f"Report ingestion, {i['nodes']} nodes × 1 batch/s for {i['elapsed_s']:.0f} s: {i['batches']} batches, {i['errors']} errors, p50 {i['p50_ms']:.1f} ms, p99 {i['p99_ms']:.1f} ms; control plane used {i['control_plane_cores']:.2f} cores.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
