#!/usr/bin/env python3
"""Checks of deploy/: the container image, the Kubernetes manifests, the Prometheus alerts
and the Grafana dashboard, against the sources of the binaries they run.

    python3 deploy/tests/test_deploy.py            (scripts/test.sh runs it)

Only the Python standard library, plus `kubectl` (renders the Kustomize overlays and turns
them into JSON, offline) and `promtool` (Debian's `prometheus` package).
scripts/install-test-deps.sh installs both when apt has them; without kubectl the
Kubernetes checks are skipped with a notice (Debian's archive has no kubectl), without
promtool the Prometheus checks fail.

What "the binaries know" is read from the sources each run, never copied here: the
`settings!` declarations in control-plane/src/config.rs and data-plane/src/config.rs, the
ops routes in control-plane/src/ops.rs and data-plane/src/ops.rs, the metric
registrations in control-plane/src/metrics.rs and data-plane/src/metrics.rs, and the
workspace's Cargo.toml files. Every failure names the offending item.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
ENTRYPOINT = DEPLOY / "container" / "entrypoint.sh"
DOCKERIGNORE = REPO / ".dockerignore"
K8S = DEPLOY / "k8s"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "sidecar.json"
PANEL_METRICS = DEPLOY / "grafana" / "panel_metrics.txt"
OPERATIONS_DOC = REPO / "docs" / "operations.md"

CONTROL_CONFIG = REPO / "control-plane" / "src" / "config.rs"
PROXY_CONFIG = REPO / "data-plane" / "src" / "config.rs"
CONTROL_OPS = REPO / "control-plane" / "src" / "ops.rs"
PROXY_OPS = REPO / "data-plane" / "src" / "ops.rs"
CONTROL_METRICS = REPO / "control-plane" / "src" / "metrics.rs"
PROXY_METRICS = REPO / "data-plane" / "src" / "metrics.rs"

# An env var whose name says it holds a secret.
SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

KUBECTL = shutil.which("kubectl")
PROMTOOL = shutil.which("promtool")


def rel(path):
    return os.path.relpath(path, REPO)


def expect_none(test, problems):
    """Fails the test with one line per problem."""
    if problems:
        test.fail(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))


# --- A YAML subset ---------------------------------------------------------------------
# Enough for the Prometheus files of this directory (block mappings and sequences, `|`
# block scalars, plain, single- and double-quoted scalars, `[]`, `{}` and simple flow
# lists). Anything else is an error naming the line, never a silent misreading. Scalars
# stay strings. The Kubernetes manifests are read through kubectl, not this.


class YamlError(Exception):
    pass


class MiniYaml:
    def __init__(self, text, name):
        self.raw = text.split("\n")
        self.name = name

    def fail(self, i, msg):
        raise YamlError(f"{self.name}:{i + 1}: {msg}")

    @staticmethod
    def indent_of(line):
        return len(line) - len(line.lstrip(" "))

    def significant(self, i):
        """The next line at or after i that is not blank or a comment."""
        while i < len(self.raw):
            s = self.raw[i].strip()
            if s and not s.startswith("#"):
                if "\t" in self.raw[i][: self.indent_of(self.raw[i]) + 1]:
                    self.fail(i, "tab in indentation")
                return i
            i += 1
        return i

    def parse(self):
        i = self.significant(0)
        if i >= len(self.raw):
            return None
        value, i = self.block(i, self.indent_of(self.raw[i]))
        i = self.significant(i)
        if i < len(self.raw):
            self.fail(i, "unexpected content (bad indentation?)")
        return value

    def block(self, i, indent, first=None):
        text = first if first is not None else self.raw[i].strip()
        if text == "-" or text.startswith("- "):
            return self.sequence(i, indent)
        return self.mapping(i, indent, first)

    def sequence(self, i, indent):
        out = []
        while True:
            i = self.significant(i)
            if i >= len(self.raw) or self.indent_of(self.raw[i]) != indent:
                break
            text = self.raw[i].strip()
            if not (text == "-" or text.startswith("- ")):
                break
            rest = text[1:].lstrip(" ")
            if not rest:
                j = self.significant(i + 1)
                if j < len(self.raw) and self.indent_of(self.raw[j]) > indent:
                    value, i = self.block(j, self.indent_of(self.raw[j]))
                else:
                    value, i = None, i + 1
            elif self.split_key(rest, i) is not None:
                col = indent + (len(text) - len(rest))
                value, i = self.mapping(i, col, first=rest)
            else:
                value, i = self.scalar(rest, i), i + 1
            out.append(value)
        return out, i

    def mapping(self, i, indent, first=None):
        out = {}
        while True:
            if first is None:
                i = self.significant(i)
                if i >= len(self.raw) or self.indent_of(self.raw[i]) != indent:
                    if i < len(self.raw) and self.indent_of(self.raw[i]) > indent:
                        self.fail(i, "unexpected indentation")
                    break
                text = self.raw[i].strip()
                if text == "-" or text.startswith("- "):
                    break
            else:
                text, first = first, None
            kv = self.split_key(text, i)
            if kv is None:
                self.fail(i, f"expected `key: value`, got {text!r}")
            key, rest = kv
            if key in out:
                self.fail(i, f"duplicate key {key!r}")
            if rest == "":
                j = self.significant(i + 1)
                if j < len(self.raw) and self.indent_of(self.raw[j]) > indent:
                    value, i = self.block(j, self.indent_of(self.raw[j]))
                elif j < len(self.raw) and self.indent_of(self.raw[j]) == indent and self.raw[j].strip().startswith("- "):
                    value, i = self.sequence(j, indent)
                else:
                    value, i = None, i + 1
            elif rest in ("|", "|-"):
                value, i = self.block_scalar(i + 1, indent, strip=rest == "|-")
            elif rest[0] in "|>&*!":
                self.fail(i, f"unsupported YAML: {rest!r}")
            else:
                value, i = self.scalar(rest, i), i + 1
            out[key] = value
        return out, i

    def block_scalar(self, i, parent, strip):
        lines = []
        content = None
        while i < len(self.raw):
            line = self.raw[i]
            if line.strip() == "":
                lines.append("")
                i += 1
                continue
            ind = self.indent_of(line)
            if ind <= parent:
                break
            if content is None:
                content = ind
            if ind < content:
                self.fail(i, "block scalar line less indented than its first line")
            lines.append(line[content:])
            i += 1
        while lines and lines[-1] == "":
            lines.pop()
        text = "\n".join(lines)
        return (text if strip else text + "\n") if lines else "", i

    def split_key(self, text, i):
        if text[0] in "\"'":
            end = self.quoted_end(text, i)
            if text[end:end + 1] == ":" and (len(text) == end + 1 or text[end + 1] == " "):
                return self.scalar(text[:end], i), text[end + 1:].strip()
            return None
        m = re.match(r"([A-Za-z0-9_.$/-]+):(?:\s+|$)(.*)$", text)
        if not m:
            return None
        return m.group(1), self.strip_comment(m.group(2).strip())

    def quoted_end(self, text, i):
        q = text[0]
        j = 1
        while j < len(text):
            if q == '"' and text[j] == "\\":
                j += 2
                continue
            if text[j] == q:
                if q == "'" and text[j + 1:j + 2] == "'":
                    j += 2
                    continue
                return j + 1
            j += 1
        self.fail(i, "unterminated quoted scalar")

    @staticmethod
    def strip_comment(text):
        if text[:1] in "\"'":
            return text
        m = re.search(r"\s#", text)
        return text[: m.start()].rstrip() if m else text

    def scalar(self, text, i):
        text = self.strip_comment(text.strip())
        if text.startswith('"'):
            end = self.quoted_end(text, i)
            if text[end:].strip():
                self.fail(i, f"text after a quoted scalar: {text!r}")
            try:
                return json.loads(text[:end])
            except json.JSONDecodeError:
                self.fail(i, f"unsupported escape in {text!r}")
        if text.startswith("'"):
            end = self.quoted_end(text, i)
            if text[end:].strip():
                self.fail(i, f"text after a quoted scalar: {text!r}")
            return text[1:end - 1].replace("''", "'")
        if text == "[]":
            return []
        if text == "{}":
            return {}
        if text.startswith("["):
            if not text.endswith("]") or any(c in text[1:-1] for c in "[]{}\"'"):
                self.fail(i, f"unsupported flow sequence {text!r}")
            return [x.strip() for x in text[1:-1].split(",") if x.strip()]
        if text[0] in "{&*!|>%@`":
            self.fail(i, f"unsupported YAML: {text!r}")
        return text


def load_yaml(path):
    return MiniYaml(path.read_text(), rel(path)).parse()


# --- What the sources say ----------------------------------------------------------------


def strip_rust_comments(text):
    """Removes // comments outside string literals."""
    out = []
    for line in text.split("\n"):
        in_str = False
        j = 0
        while j < len(line):
            c = line[j]
            if in_str:
                if c == "\\":
                    j += 2
                    continue
                if c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif line.startswith("//", j):
                line = line[:j]
                break
            j += 1
        out.append(line)
    return "\n".join(out)


def settings_of(path):
    """The settings a `sidecar_settings::settings!` invocation declares:
    {env name: default or None}."""
    text = strip_rust_comments(path.read_text())
    start = text.find("sidecar_settings::settings!")
    if start < 0:
        raise AssertionError(f"{rel(path)}: no sidecar_settings::settings! invocation")
    open_brace = text.index("{", start)
    depth, j = 0, open_brace
    while True:
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                break
        elif text[j] == '"':
            j += 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
        j += 1
    body = text[open_brace + 1:j]
    # Drop the `pub struct Flags { … }` header.
    body = body[body.index("}", body.index("struct")) + 1:]
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|[=,:;]', body)
    out = {}
    k = 0
    while k < len(tokens):
        end = tokens.index(";", k)
        entry = tokens[k:end]
        k = end + 1
        if len(entry) < 5 or entry[1] != "=" or not entry[2].startswith('"'):
            raise AssertionError(f"{rel(path)}: cannot read the setting {' '.join(entry)!r}")
        env = entry[2].strip('"')
        default = None
        if "default" in entry:
            default = entry[entry.index("default") + 1].strip('"')
        out[env] = default
    if not out:
        raise AssertionError(f"{rel(path)}: no settings found")
    return out


def env_reads(root, exclude=()):
    """SIDECAR_*-like names the sources read with std::env::var / var_os."""
    names = set()
    for f in root.rglob("*.rs"):
        if any(part in f.parts for part in exclude):
            continue
        names |= set(re.findall(r'env::var(?:_os)?\(\s*"([A-Z0-9_]+)"\s*\)', f.read_text()))
    return names


def sidecarctl_env():
    names = set()
    for f in (REPO / "control-plane" / "src" / "bin" / "sidecarctl").rglob("*.rs"):
        names |= set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', f.read_text()))
    return names


def known_env():
    """{role: names its binary reads}; role "any" is every binary in the image."""
    control = set(settings_of(CONTROL_CONFIG)) | env_reads(REPO / "control-plane" / "src", exclude=("sidecarctl",))
    proxy = set(settings_of(PROXY_CONFIG)) | env_reads(REPO / "data-plane" / "src")
    return {"control": control, "proxy": proxy, "any": control | proxy | sidecarctl_env()}


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def host_of(addr):
    return addr.rsplit(":", 1)[0].strip("[]")


def default_ports():
    control, proxy = settings_of(CONTROL_CONFIG), settings_of(PROXY_CONFIG)
    return {
        "control": {"api": port_of(control["SIDECAR_CONTROL_LISTEN"]), "ops": port_of(control["SIDECAR_CONTROL_OPS_LISTEN"])},
        "proxy": {"api": int(proxy["SIDECAR_PORT"]), "ops": port_of(proxy["SIDECAR_OPS_LISTEN"])},
    }


def ops_routes():
    out = {}
    for role, path in (("control", CONTROL_OPS), ("proxy", PROXY_OPS)):
        routes = set(re.findall(r'\.route\(\s*"(/[^"]*)"', path.read_text()))
        if "/health" not in routes:
            raise AssertionError(f"{rel(path)}: no /health route found (the ops routes moved?)")
        out[role] = routes
    return out


def registered_metrics():
    """{name: type} of every metric the binaries describe (HELP/TYPE) and also emit."""
    found = {}
    control = CONTROL_METRICS.read_text()
    for kind, name in re.findall(r'describe_(counter|gauge|histogram)!\(\s*"(sidecar_[a-z0-9_]+)"', control):
        found[name] = (kind, REPO / "control-plane" / "src")
    proxy = PROXY_METRICS.read_text()
    for names, kind in re.findall(
        r"for \(name, unit, help\) in \[(.*?)\]\s*\{\s*r\.describe_(counter|gauge|histogram)\(", proxy, re.S
    ):
        for name in re.findall(r'd\(\s*"(sidecar_[a-z0-9_]+)"', names):
            found[name] = (kind, REPO / "data-plane" / "src")
    if len(found) < 10:
        raise AssertionError("found fewer than 10 metric descriptions: the metrics modules changed shape")
    out = {}
    # The control plane's bounded per-key figures are rendered at scrape time, HELP and TYPE
    # written with them (control-plane/src/key_metrics.rs).
    keys = (REPO / "control-plane" / "src" / "key_metrics.rs").read_text()
    for name, kind in re.findall(r"# TYPE (sidecar_[a-z0-9_]+) (counter|gauge)", keys):
        if re.search(rf"\n{name}\{{", keys.replace('"', "\n")):
            out[name] = kind
    for name, (kind, src) in found.items():
        uses = sum(f.read_text().count(f'"{name}"') for f in src.rglob("*.rs"))
        if uses >= 2:  # described, and emitted somewhere
            out[name] = kind
    return out


def metric_exists(name, registry):
    if name in registry:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and registry.get(name[: -len(suffix)]) == "histogram":
            return True
    return False


def promql_metrics(expr):
    return set(re.findall(r"(?<![A-Za-z0-9_:])(sidecar_[a-zA-Z0-9_:]+)", expr))


def load_toml(path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11: just what workspace() reads.
        return cargo_toml_subset(path.read_text())
    return tomllib.loads(path.read_text())


def cargo_toml_subset(text):
    """[workspace] members, [package] name/autobins and [[bin]] names of a Cargo.toml."""
    out, table = {}, None
    members = re.search(r"^members\s*=\s*\[(.*?)\]", text, re.S | re.M)
    if members:
        out["workspace"] = {"members": re.findall(r'"([^"]+)"', members.group(1))}
    for line in text.split("\n"):
        line = line.split("#", 1)[0].strip()
        if line.startswith("[["):
            table = line.strip("[]").strip()
            out.setdefault(table, []).append({})
        elif line.startswith("["):
            table = line.strip("[]").strip()
            out.setdefault(table, {})
        elif (m := re.match(r'(name|autobins)\s*=\s*("([^"]*)"|true|false)', line)) and table in ("package", "bin"):
            value = m.group(3) if m.group(3) is not None else m.group(2) == "true"
            (out[table][-1] if table == "bin" else out[table])[m.group(1)] = value
    return out


def workspace():
    """{package name: set of binary names} of the workspace members."""
    root = load_toml(REPO / "Cargo.toml")
    out = {}
    for member in root["workspace"]["members"]:
        manifest = load_toml(REPO / member / "Cargo.toml")
        pkg = manifest["package"]["name"]
        bins = {b["name"] for b in manifest.get("bin", [])}
        if manifest["package"].get("autobins", True):
            if (REPO / member / "src" / "main.rs").exists():
                bins.add(pkg)
            bindir = REPO / member / "src" / "bin"
            if bindir.is_dir():
                bins |= {p.stem for p in bindir.glob("*.rs")}
                bins |= {p.name for p in bindir.iterdir() if (p / "main.rs").exists()}
        out[pkg] = bins
    return out


# --- The Dockerfile ----------------------------------------------------------------------


def dockerfile():
    """[(instruction, arguments, line)] with continuations joined; and the stages."""
    out = []
    lines = DOCKERFILE.read_text().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        start = i
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and i < len(lines):
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                continue
            line = line.rstrip()[:-1] + " " + nxt.strip()
        word, _, args = line.strip().partition(" ")
        out.append((word.upper(), args.strip(), start + 1))
    return out


def stages():
    """[(stage name, [(instruction, args, line)])]."""
    out = []
    for ins in dockerfile():
        if ins[0] == "FROM":
            m = re.search(r"\s+AS\s+(\S+)\s*$", ins[1], re.I)
            out.append((m.group(1) if m else str(len(out)), []))
        elif out:
            out[-1][1].append(ins)
    return out


def copy_parts(args):
    """(flags, sources, destination) of a COPY/ADD."""
    if args.startswith("["):
        words = json.loads(args)
        flags = []
    else:
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        words = [w for w in words if not w.startswith("--")]
        if args.lstrip().startswith("--") and words and words[0].startswith("["):
            words = json.loads(args[args.index("["):])
    flags = dict(f[2:].split("=", 1) if "=" in f else (f[2:], "") for f in flags)
    return flags, words[:-1], words[-1]


def dockerignore_patterns():
    out = []
    for line in DOCKERIGNORE.read_text().split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        pat = pat.strip("/")
        regex = ""
        k = 0
        while k < len(pat):
            if pat.startswith("**/", k):
                regex += "(?:.*/)?"
                k += 3
            elif pat.startswith("**", k):
                regex += ".*"
                k += 2
            elif pat[k] == "*":
                regex += "[^/]*"
                k += 1
            elif pat[k] == "?":
                regex += "[^/]"
                k += 1
            else:
                regex += re.escape(pat[k])
                k += 1
        out.append((neg, re.compile(regex + r"\Z"), line))
    return out


def dockerignored(path):
    """The .dockerignore line that excludes path (relative, posix), or None."""
    parts = path.strip("/").split("/")
    excluded = None
    for neg, regex, line in dockerignore_patterns():
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = None if neg else line
    return excluded


def image_env():
    env = {}
    for name, instructions in stages()[-1:]:
        for word, args, _ in instructions:
            if word == "ENV":
                for w in shlex.split(args):
                    k, _, v = w.partition("=")
                    env[k] = v
    return env


class DockerfileTest(unittest.TestCase):
    """deploy/container/Dockerfile and its entrypoint."""

    def test_copied_paths_exist_and_are_in_the_build_context(self):
        problems = []
        for word, args, line in dockerfile():
            if word not in ("COPY", "ADD"):
                continue
            flags, sources, _ = copy_parts(args)
            if "from" in flags:
                continue
            for src in sources:
                src = src.rstrip("/") or "."
                matches = list(REPO.glob(src)) if any(c in src for c in "*?[") else [REPO / src]
                if not matches or not all(m.exists() for m in matches):
                    problems.append(f"line {line}: {word} {src}: no such path in the repository")
                elif (why := dockerignored(src)) is not None:
                    problems.append(f"line {line}: {word} {src}: excluded from the build context by .dockerignore ({why})")
        expect_none(self, problems)

    def test_every_binary_named_is_built_by_the_workspace(self):
        ws = workspace()
        problems = []
        built = set()
        cargo_runs = [(a, l) for w, a, l in dockerfile() if w == "RUN" and "cargo build" in a]
        self.assertTrue(cargo_runs, "the Dockerfile runs no `cargo build`")
        for args, line in cargo_runs:
            cmd = args[args.index("cargo build"):].split("&&")[0]
            words = shlex.split(cmd)
            pkgs = [words[k + 1] for k, w in enumerate(words) if w in ("-p", "--package")]
            pkgs += [w.split("=", 1)[1] for w in words if w.startswith("--package=")]
            if not pkgs:
                problems.append(f"line {line}: `cargo build` without -p: name the packages the image needs")
            for p in pkgs:
                if p not in ws:
                    problems.append(f"line {line}: -p {p}: not a workspace package (packages: {', '.join(sorted(ws))})")
                else:
                    built |= ws[p]
            if "--bins" not in words:
                problems.append(f"line {line}: `cargo build` without --bins")
            profile = "release" if "--release" in words else "debug"
            for name in re.findall(r"target/([a-z]+)/([A-Za-z0-9_.-]+)", args):
                if name[0] != profile:
                    problems.append(f"line {line}: copies target/{name[0]}/{name[1]} but builds the {profile} profile")
        named = {}
        for word, args, line in dockerfile():
            for n in re.findall(r"target/[a-z]+/([A-Za-z0-9_.-]+)", args):
                named.setdefault(n, line)
            if word == "COPY" and copy_parts(args)[0].get("from"):
                for src in copy_parts(args)[1]:
                    if src.startswith("/out/"):
                        named.setdefault(Path(src).name, line)
        script = ENTRYPOINT.read_text()
        called = set(re.findall(r"exec /usr/local/bin/([A-Za-z0-9_.-]+)", script))
        for n in called:
            named.setdefault(n, f"{rel(ENTRYPOINT)}")
        for n, where in sorted(named.items()):
            if n not in built:
                problems.append(f"{where}: binary {n!r} is not a bin of the packages built ({', '.join(sorted(built))})")
        installed = set()
        for word, args, line in stages()[-1][1]:
            if word == "COPY":
                flags, sources, dest = copy_parts(args)
                if dest.rstrip("/") == "/usr/local/bin":
                    installed |= {Path(s).name for s in sources}
        for n in sorted(called - installed):
            problems.append(f"{rel(ENTRYPOINT)} runs /usr/local/bin/{n}, which the runtime stage does not install")
        expect_none(self, problems)

    def test_exposed_ports_are_the_binaries_defaults(self):
        defaults = default_ports()
        want = {p for role in defaults.values() for p in role.values()}
        exposed = set()
        for word, args, line in stages()[-1][1]:
            if word == "EXPOSE":
                exposed |= {int(w.split("/")[0]) for w in args.split()}
        self.assertEqual(
            exposed, want,
            f"EXPOSE {sorted(exposed)} differs from the binaries' default ports {sorted(want)} "
            f"(extra: {sorted(exposed - want)}, missing: {sorted(want - exposed)})",
        )
        env = image_env()
        listen = {
            "SIDECAR_CONTROL_LISTEN": defaults["control"]["api"],
            "SIDECAR_CONTROL_OPS_LISTEN": defaults["control"]["ops"],
            "SIDECAR_OPS_LISTEN": defaults["proxy"]["ops"],
        }
        problems = []
        for name, port in listen.items():
            if name in env and port_of(env[name]) != port:
                problems.append(f"ENV {name}={env[name]}: port differs from the default {port}")
        if "SIDECAR_PORT" in env and int(env["SIDECAR_PORT"]) != defaults["proxy"]["api"]:
            problems.append(f"ENV SIDECAR_PORT={env['SIDECAR_PORT']}: differs from the default {defaults['proxy']['api']}")
        expect_none(self, problems)

    def test_env_names_are_known_to_the_binaries(self):
        known = known_env()["any"]
        unknown = sorted(set(image_env()) - known)
        self.assertEqual(unknown, [], f"ENV sets names no binary reads: {unknown}")

    def test_runtime_is_non_root_with_a_data_volume(self):
        name, instructions = stages()[-1]
        users = [a for w, a, _ in instructions if w == "USER"]
        self.assertTrue(users, f"the runtime stage ({name}) sets no USER: it would run as root")
        user = users[-1].split(":")[0]
        self.assertNotIn(user, ("root", "0"), f"USER {users[-1]} is root")
        self.assertTrue(user.isdigit(), f"USER {users[-1]}: use a numeric uid, so Kubernetes can check runAsNonRoot")
        volumes = set()
        for w, a, _ in instructions:
            if w == "VOLUME":
                volumes |= set(json.loads(a) if a.startswith("[") else a.split())
        self.assertIn("/data", volumes, "no VOLUME /data")
        self.assertEqual(image_env().get("SIDECAR_DATA_DIR"), "/data", "SIDECAR_DATA_DIR is not the /data volume")

    def test_healthcheck_asks_the_ops_ports_health_route(self):
        checks = [a for w, a, _ in stages()[-1][1] if w == "HEALTHCHECK"]
        self.assertTrue(checks, "no HEALTHCHECK")
        cmd = checks[-1].split("CMD", 1)[1].strip()
        words = json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)
        self.assertEqual(words, ["/usr/local/bin/sidecar-entrypoint", "healthcheck"],
                         f"HEALTHCHECK runs {words}, expected the entrypoint's healthcheck")
        script = ENTRYPOINT.read_text()
        body = script[script.index("healthcheck() {"):]
        body = body[: body.index("\n}\n")]
        routes = ops_routes()
        paths = set(re.findall(r"GET (/\S*) HTTP", body))
        self.assertTrue(paths, "the healthcheck sends no GET")
        for p in paths:
            for role in ("control", "proxy"):
                self.assertIn(p, routes[role], f"the healthcheck asks {p}, which the {role} ops port does not serve")
        defaults = default_ports()
        settings = {"control": settings_of(CONTROL_CONFIG), "proxy": settings_of(PROXY_CONFIG)}
        found = {k: v for k, v in re.findall(r"(sidecar-control|sidecar-proxy)\)\s*addr=\$\{([A-Z_]+:-[^}]+)\}", body)}
        self.assertEqual(set(found), {"sidecar-control", "sidecar-proxy"}, "the healthcheck does not handle both roles")
        for proc, spec in found.items():
            role = "control" if proc == "sidecar-control" else "proxy"
            env, default = spec.split(":-", 1)
            self.assertIn(env, settings[role], f"the healthcheck reads {env}, not a setting of {proc}")
            self.assertEqual(port_of(default), defaults[role]["ops"],
                             f"the healthcheck's default for {env} ({default}) is not {proc}'s ops port")

    def test_console_is_built_and_served_from_where_the_control_plane_looks(self):
        runs = " ".join(a for w, a, _ in dockerfile() if w == "RUN")
        for cmd in ("npm --prefix web-ui ci", "npm --prefix web-ui run build"):
            self.assertIn(cmd, runs, f"the Dockerfile does not run `{cmd}`")
        pkg = json.loads((REPO / "web-ui" / "package.json").read_text())
        self.assertIn("build", pkg.get("scripts", {}), "web-ui/package.json has no build script")
        self.assertIn('outDir: "dist"', (REPO / "web-ui" / "vite.config.js").read_text(), "vite no longer builds to dist/")
        console = image_env().get("SIDECAR_CONSOLE_DIR")
        self.assertIn("SIDECAR_CONSOLE_DIR", settings_of(CONTROL_CONFIG), "the control plane has no SIDECAR_CONSOLE_DIR")
        dests = [copy_parts(a) for w, a, _ in stages()[-1][1] if w == "COPY"]
        self.assertIn(
            console, [d for f, s, d in dests if any(x.endswith("web-ui/dist") for x in s)],
            f"SIDECAR_CONSOLE_DIR={console} is not where the built console (web-ui/dist) is copied",
        )

    def test_gen_key_is_a_subcommand_of_the_control_plane(self):
        script = ENTRYPOINT.read_text()
        self.assertRegex(script, r"gen-key\)\s*exec /usr/local/bin/sidecar-control gen-key",
                         "the entrypoint's gen-key does not run `sidecar-control gen-key`")
        src = (REPO / "control-plane" / "src" / "bin" / "sidecar-control.rs").read_text()
        self.assertRegex(src, r"enum Command\s*\{[^}]*\bGenKey\b", "sidecar-control has no GenKey subcommand")


# --- Kubernetes --------------------------------------------------------------------------


def render(directory):
    """The objects `kubectl kustomize DIRECTORY` renders, as dicts. kubectl turns the YAML
    into JSON offline with `label --local` (removing a label nobody sets changes nothing)."""
    out = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {rel(directory)} failed:\n{out.stderr.strip()}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(out.stdout)
        f.flush()
        js = subprocess.run([KUBECTL, "label", "--local", "-f", f.name, "-o", "json", "sidecar-test-none-"],
                            capture_output=True, text=True)
    if js.returncode != 0:
        raise AssertionError(f"kubectl could not read the rendering of {rel(directory)}:\n{js.stderr.strip()}")
    objs, text, k = [], js.stdout, 0
    decoder = json.JSONDecoder()
    while k < len(text):
        while k < len(text) and text[k].isspace():
            k += 1
        if k >= len(text):
            break
        obj, k = decoder.raw_decode(text, k)
        objs.extend(obj["items"] if obj.get("kind") == "List" else [obj])
    if not objs:
        raise AssertionError(f"{rel(directory)} renders nothing")
    return objs


def overlays():
    return sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def oname(o):
    return f"{o['kind']}/{o['metadata']['name']}"


def workloads(objs):
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


def pod_spec(w):
    return w["spec"]["jobTemplate"]["spec"]["template"]["spec"] if w["kind"] == "CronJob" else w["spec"]["template"]["spec"]


def role_of(container):
    args = container.get("args") or []
    return args[0] if args and args[0] in ("control", "proxy") else None


def secret_volumes(spec):
    names = set()
    for v in spec.get("volumes", []):
        if "secret" in v:
            names.add(v["name"])
        elif "projected" in v and all("secret" in s for s in v["projected"].get("sources", [])):
            names.add(v["name"])
    return names


def effective_env(objs, container):
    """{name: (kind, value)}: kind "value" (a literal), "secret", "configmap-key", "field" or
    "configmap" (from envFrom, with the value). Later sources override earlier ones, as in
    Kubernetes (env over envFrom)."""
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    env = {}
    for src in container.get("envFrom", []):
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            if name not in configmaps:
                raise AssertionError(f"container {container['name']}: envFrom ConfigMap {name} is not in the manifests")
            for k, v in configmaps[name].items():
                env[prefix + k] = ("configmap", v)
        else:
            raise AssertionError(
                f"container {container['name']}: envFrom {list(src)}: list secret variables one by one "
                "(secretKeyRef) so that their names can be checked"
            )
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = ("value", e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = ("secret", e["valueFrom"]["secretKeyRef"])
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = ("configmap-key", configmaps.get(ref["name"], {}).get(ref["key"]))
        elif "fieldRef" in e.get("valueFrom", {}) or "resourceFieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = ("field", None)
        else:
            env[e["name"]] = ("value", "")
    return env


def containers_of(objs):
    """[(workload, pod spec, container)] of every container and init container."""
    out = []
    for w in workloads(objs):
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            out.append((w, spec, c))
    return out


def listen_ports(role, env):
    """(api port, ops port, api host, ops host) the container's binary listens on."""
    s = settings_of(CONTROL_CONFIG if role == "control" else PROXY_CONFIG)
    val = lambda n: env[n][1] if n in env and env[n][0] in ("value", "configmap") and env[n][1] else s[n]
    if role == "control":
        api, ops = val("SIDECAR_CONTROL_LISTEN"), val("SIDECAR_CONTROL_OPS_LISTEN")
        return port_of(api), port_of(ops), host_of(api), host_of(ops)
    ops = val("SIDECAR_OPS_LISTEN")
    return int(val("SIDECAR_PORT")), port_of(ops), val("SIDECAR_HOST"), host_of(ops)


def resolve_port(container, port):
    for p in container.get("ports", []):
        if port == p.get("name") or port == p.get("containerPort"):
            return p["containerPort"]
    return None


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def store_kind(env):
    """Where a control-plane container's store is: "sled" (unset, the default, or `sled`),
    "secret" (SIDECAR_STORE from a secretKeyRef: a postgres://… URL, which holds a
    password) or "inline" (any other source: a literal, a ConfigMap, a field)."""
    kind, value = env.get("SIDECAR_STORE", ("default", settings_of(CONTROL_CONFIG)["SIDECAR_STORE"]))
    if kind == "secret":
        return "secret"
    if kind != "field" and str(value or "").strip() == "sled":
        return "sled"
    return "inline"


def split_urls(value):
    """The URLs of a comma-separated SIDECAR_CONTROL_URL, as the proxy splits them."""
    return [u.strip() for u in str(value).split(",") if u.strip()]


def dns_names(name, namespace):
    """The names a Service (or a pod under a headless Service: name "pod.service") has
    from inside the cluster."""
    return {name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"}


@unittest.skipUnless(KUBECTL, "kubectl is not installed (Debian's archive has none): Kubernetes checks skipped")
class KubernetesTest(unittest.TestCase):
    """deploy/k8s: every overlay renders, and the rendered objects keep the invariants."""

    rendered = {}

    @classmethod
    def setUpClass(cls):
        cls.errors = {}
        for o in overlays():
            try:
                cls.rendered[o.name] = render(o)
            except AssertionError as e:
                cls.errors[o.name] = str(e)
        # The TLS variant without client certificates, which the tls overlay documents.
        with tempfile.TemporaryDirectory() as d:
            up = os.path.relpath(K8S, d)
            Path(d, "kustomization.yaml").write_text(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                f"resources:\n  - {up}/base\ncomponents:\n  - {up}/components/monitoring\n  - {up}/components/tls\n"
            )
            try:
                cls.rendered["tls-without-mtls"] = render(d)
            except AssertionError as e:
                cls.errors["tls-without-mtls"] = str(e)

    def each(self):
        for name, objs in sorted(self.rendered.items()):
            yield name, objs

    def test_every_overlay_renders(self):
        self.assertTrue(overlays(), "no overlays in deploy/k8s/overlays")
        self.assertEqual({o.name for o in overlays()} >= {"single", "tls", "ha"}, True, "the single, tls and ha overlays must exist")
        self.assertEqual(self.errors, {}, "\n".join(self.errors.values()))

    def test_env_names_are_known_to_the_binaries(self):
        known = known_env()
        problems = []
        for name, objs in self.each():
            for w, spec, c in containers_of(objs):
                role = role_of(c)
                if role is None:
                    problems.append(f"{name}: {oname(w)} container {c['name']}: runs neither `control` nor `proxy` (args {c.get('args')})")
                    continue
                for env in sorted(set(effective_env(objs, c)) - known[role]):
                    problems.append(f"{name}: {oname(w)} container {c['name']} ({role}): {env} is not a setting of the {role} binary")
        expect_none(self, problems)

    def test_ports_and_probes_match_the_binaries(self):
        routes = ops_routes()
        problems = []
        for name, objs in self.each():
            for w, spec, c in containers_of(objs):
                role = role_of(c)
                if role is None:
                    continue
                where = f"{name}: {oname(w)} container {c['name']}"
                env = effective_env(objs, c)
                api, ops, api_host, ops_host = listen_ports(role, env)
                for what, host in (("API", api_host), ("ops", ops_host)):
                    if host.startswith("127.") or host in ("localhost", "::1"):
                        problems.append(f"{where}: the {what} port listens on {host}, unreachable from other pods")
                declared = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                if sorted(declared.values()) != sorted({api, ops}):
                    problems.append(f"{where}: containerPorts {declared} differ from the ports it listens on (api {api}, ops {ops})")
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    p = c.get(probe)
                    if p is None:
                        if probe != "startupProbe":
                            problems.append(f"{where}: no {probe}")
                        continue
                    if "httpGet" not in p:
                        problems.append(f"{where}: {probe} is not an HTTP GET of a health endpoint")
                        continue
                    port = resolve_port(c, p["httpGet"]["port"])
                    path = p["httpGet"].get("path", "/")
                    if port is None:
                        problems.append(f"{where}: {probe} port {p['httpGet']['port']!r} is not a containerPort")
                    elif port != ops:
                        problems.append(f"{where}: {probe} port {port} is not the ops port {ops}")
                    if path not in routes[role]:
                        problems.append(f"{where}: {probe} path {path} is not served by the {role} ops port ({sorted(routes[role])})")
                if role == "proxy" and "/health/ready" in routes["proxy"]:
                    rp = (c.get("readinessProbe") or {}).get("httpGet", {}).get("path")
                    if rp != "/health/ready":
                        problems.append(f"{where}: readinessProbe path {rp}: use /health/ready (503 until a config is applied)")
                ann = (w["spec"]["template"]["metadata"].get("annotations") or {})
                if ann.get("prometheus.io/scrape") == "true":
                    if str(ann.get("prometheus.io/port")) != str(ops):
                        problems.append(f"{where}: prometheus.io/port {ann.get('prometheus.io/port')} is not the ops port {ops}")
                    if ann.get("prometheus.io/path", "/metrics") not in routes[role]:
                        problems.append(f"{where}: prometheus.io/path {ann.get('prometheus.io/path')} is not an ops route")
            problems += self.service_problems(name, objs, routes)
        expect_none(self, problems)

    def service_problems(self, name, objs, routes):
        problems = []
        services = [o for o in objs if o["kind"] == "Service"]
        for s in services:
            sel = s["spec"].get("selector") or {}
            pods = [(w, c) for w, spec, c in containers_of(objs)
                    if matches(sel, w["spec"]["template"]["metadata"].get("labels", {}))]
            if not pods:
                problems.append(f"{name}: {oname(s)} selects no pods")
            for port in s["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                if not any(resolve_port(c, target) for w, c in pods):
                    problems.append(f"{name}: {oname(s)} port {port.get('name', port['port'])}: targetPort {target!r} is no containerPort of the pods it selects")
        monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
        if not monitors:
            problems.append(f"{name}: no ServiceMonitor (include components/monitoring)")
        for m in monitors:
            sel = m["spec"].get("selector", {}).get("matchLabels", {})
            picked = [s for s in services if matches(sel, s["metadata"].get("labels", {}))]
            if not picked:
                problems.append(f"{name}: {oname(m)} selects no Service")
            for s in picked:
                pods = [c for w, spec, c in containers_of(objs)
                        if matches(s["spec"].get("selector") or {}, w["spec"]["template"]["metadata"].get("labels", {}))]
                for ep in m["spec"].get("endpoints", []):
                    sp = [p for p in s["spec"]["ports"] if p.get("name") == ep.get("port")]
                    if not sp:
                        problems.append(f"{name}: {oname(m)} endpoint port {ep.get('port')!r} is not a port of {oname(s)}")
                        continue
                    for c in pods:
                        role = role_of(c)
                        if role is None:
                            continue
                        ops = listen_ports(role, effective_env(objs, c))[1]
                        if resolve_port(c, sp[0].get("targetPort", sp[0]["port"])) != ops:
                            problems.append(f"{name}: {oname(m)} scrapes {oname(s)} port {ep.get('port')}, which is not the ops port {ops} of {c['name']}")
                        if ep.get("path", "/metrics") not in routes[role]:
                            problems.append(f"{name}: {oname(m)} path {ep.get('path')} is not an ops route of {role}")
        return problems

    def test_no_secret_value_inline(self):
        problems = []
        for name, objs in self.each():
            for o in objs:
                if o["kind"] == "Secret" and (o.get("data") or o.get("stringData")):
                    problems.append(f"{name}: {oname(o)} carries values inline: create it out of band and reference it")
            for w, spec, c in containers_of(objs):
                secret_mounts = [m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts", [])
                                 if m["name"] in secret_volumes(spec)]
                for env, (kind, value) in sorted(effective_env(objs, c).items()):
                    if not SECRET_NAME.search(env) or kind == "secret":
                        continue
                    where = f"{name}: {oname(w)} container {c['name']}: {env}"
                    if kind in ("value", "configmap", "configmap-key") and value and any(
                            str(value).startswith(m) for m in secret_mounts):
                        continue  # a path to a file of a mounted Secret, not the secret itself
                    source = {"value": "an inline value", "configmap": "a ConfigMap", "configmap-key": "a ConfigMap key",
                              "field": "a field reference"}[kind]
                    problems.append(f"{where} comes from {source} ({value!r}): use a secretKeyRef, or a path into a mounted Secret")
        expect_none(self, problems)

    def test_secrets_are_documented(self):
        doc = OPERATIONS_DOC.read_text() if OPERATIONS_DOC.exists() else ""
        problems = []
        for name, objs in self.each():
            for w, spec, c in containers_of(objs):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref and not (ref["name"] in doc and ref["key"] in doc):
                        problems.append(f"{name}: Secret {ref['name']} key {ref['key']} (for {e['name']}) is not explained in {rel(OPERATIONS_DOC)}")
                for v in spec.get("volumes", []):
                    if "secret" in v and v["secret"]["secretName"] not in doc:
                        problems.append(f"{name}: Secret {v['secret']['secretName']} (volume {v['name']}) is not explained in {rel(OPERATIONS_DOC)}")
        expect_none(self, sorted(set(problems)))

    def test_containers_run_non_root_on_a_read_only_root(self):
        problems = []
        for name, objs in self.each():
            for w, spec, c in containers_of(objs):
                where = f"{name}: {oname(w)} container {c['name']}"
                pod, sc = spec.get("securityContext", {}), c.get("securityContext", {})
                if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
                    problems.append(f"{where}: runAsNonRoot is not true")
                if sc.get("runAsUser", pod.get("runAsUser")) == 0:
                    problems.append(f"{where}: runAsUser 0")
                if not sc.get("readOnlyRootFilesystem"):
                    problems.append(f"{where}: readOnlyRootFilesystem is not true")
                if sc.get("allowPrivilegeEscalation", True):
                    problems.append(f"{where}: allowPrivilegeEscalation is not false")
                if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                    problems.append(f"{where}: capabilities are not all dropped")
                if spec.get("enableServiceLinks", True):
                    problems.append(f"{where}: enableServiceLinks is not false: Kubernetes would set SIDECAR_*_PORT=tcp://… variables, "
                                    "the settings' own prefix (a Service named sidecar would set SIDECAR_PORT)")
                if spec.get("automountServiceAccountToken", True):
                    problems.append(f"{where}: automountServiceAccountToken is not false (Sidecar does not use the API server)")
                if "cpu" not in c.get("resources", {}).get("requests", {}) or "memory" not in c.get("resources", {}).get("requests", {}):
                    problems.append(f"{where}: no cpu and memory requests")
                if "memory" not in c.get("resources", {}).get("limits", {}):
                    problems.append(f"{where}: no memory limit")
                mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", [])}
                env = effective_env(objs, c)
                role = role_of(c)
                s = settings_of(CONTROL_CONFIG if role == "control" else PROXY_CONFIG) if role else {}
                dirs = {"/tmp": None}
                for d in ("SIDECAR_DATA_DIR", "SIDECAR_BACKUP_DIR"):
                    if d in env and env[d][0] in ("value", "configmap"):
                        dirs[env[d][1]] = d
                    elif d in s and s[d]:
                        dirs[s[d]] = d
                for path, setting in dirs.items():
                    covering = [m for p, m in mounts.items() if path == p or path.startswith(p + "/")]
                    label = f"{setting}={path}" if setting else path
                    if not covering:
                        problems.append(f"{where}: {label} is on the read-only root filesystem: mount a volume there")
                    elif covering[0].get("readOnly"):
                        problems.append(f"{where}: {label} is mounted read-only")
        expect_none(self, problems)

    def test_workloads(self):
        problems = []
        for name, objs in self.each():
            controls = [w for w, spec, c in containers_of(objs) if role_of(c) == "control"]
            proxies = [w for w, spec, c in containers_of(objs) if role_of(c) == "proxy"]
            if len(controls) != 1 or controls[0]["kind"] != "StatefulSet":
                problems.append(f"{name}: expected one control-plane StatefulSet, got {[oname(w) for w in controls]}")
            for w in controls:
                c = [c for c in pod_spec(w)["containers"] if role_of(c) == "control"][0]
                env = effective_env(objs, c)
                if store_kind(env) != "sled":
                    continue  # PostgreSQL: several instances, nothing of the store on a volume (test_several_control_planes)
                if w["spec"].get("replicas", 1) != 1:
                    problems.append(f"{name}: {oname(w)} has {w['spec']['replicas']} replicas: sled takes one writer")
                claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
                data = env.get("SIDECAR_DATA_DIR", ("", settings_of(CONTROL_CONFIG)["SIDECAR_DATA_DIR"]))[1]
                mount = [m for m in c.get("volumeMounts", []) if data == m["mountPath"] or data.startswith(m["mountPath"].rstrip("/") + "/")]
                if not mount or mount[0]["name"] not in claims:
                    problems.append(f"{name}: {oname(w)}: the data dir {data} is not on a volumeClaimTemplate ({sorted(claims)})")
            if not proxies:
                problems.append(f"{name}: no proxy workload")
            pods = [w["spec"]["template"]["metadata"].get("labels", {}) for w in workloads(objs)]
            for pdb in (o for o in objs if o["kind"] == "PodDisruptionBudget"):
                if not any(matches(pdb["spec"]["selector"].get("matchLabels", {}), l) for l in pods):
                    problems.append(f"{name}: {oname(pdb)} selects no pods")
            if not any(o["kind"] == "PodDisruptionBudget" for o in objs):
                problems.append(f"{name}: no PodDisruptionBudget")
            for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
                ref = hpa["spec"]["scaleTargetRef"]
                if not any(w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"] for w in proxies):
                    problems.append(f"{name}: {oname(hpa)} scales {ref['kind']}/{ref['name']}, not a proxy workload")
            if name == "single" and not any(o["kind"] == "HorizontalPodAutoscaler" for o in objs):
                problems.append(f"{name}: no HorizontalPodAutoscaler for the proxies")
        expect_none(self, problems)

    def test_no_database_url_inline(self):
        problems = []
        for name, objs in self.each():
            for o in objs:
                if re.search(r"postgres(?:ql)?://", json.dumps(o), re.I):
                    problems.append(f"{name}: {oname(o)} carries a postgres:// URL (it holds the database password): "
                                    "reference it from a Secret (secretKeyRef)")
            for w, spec, c in containers_of(objs):
                if role_of(c) == "control" and store_kind(effective_env(objs, c)) == "inline":
                    problems.append(f"{name}: {oname(w)} container {c['name']}: SIDECAR_STORE is neither sled nor from a secretKeyRef")
        expect_none(self, problems)

    # Every overlay with more than one control plane, or on PostgreSQL (`ha`): several
    # instances on a store from a Secret, each named after its pod, spread over nodes, at
    # most one down at a time, and proxies that list them all (docs/ha.md).
    def test_several_control_planes(self):
        self.assertIn("ha", self.rendered, "the ha overlay does not render")
        problems = []
        for name, objs in self.each():
            controls = [(w, c) for w, spec, c in containers_of(objs) if role_of(c) == "control"]
            several = name == "ha" or any(w["spec"].get("replicas", 1) > 1 or store_kind(effective_env(objs, c)) != "sled"
                                          for w, c in controls)
            if not several:
                continue
            if len(controls) != 1:
                continue  # test_workloads names it
            w, c = controls[0]
            where = f"{name}: {oname(w)}"
            env = effective_env(objs, c)
            replicas = w["spec"].get("replicas", 1)
            if replicas < 2:
                problems.append(f"{where}: {replicas} replica(s): several control planes need at least 2")
            if store_kind(env) != "secret":
                problems.append(f"{where}: SIDECAR_STORE does not come from a secretKeyRef (a postgres://… URL holds a password; "
                                "sled takes one writer)")
            inst = [e for e in c.get("env", []) if e["name"] == "SIDECAR_INSTANCE_NAME"]
            if not inst or inst[-1].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
                problems.append(f"{where}: SIDECAR_INSTANCE_NAME is not the pod's name (valueFrom.fieldRef.fieldPath: metadata.name)")
            labels = w["spec"]["template"]["metadata"].get("labels", {})
            pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"
                    and matches(o["spec"]["selector"].get("matchLabels", {}), labels)]
            if not pdbs:
                problems.append(f"{where}: no PodDisruptionBudget selects the control-plane pods")
            for pdb in pdbs:
                mu, ma = pdb["spec"].get("maxUnavailable"), pdb["spec"].get("minAvailable")
                if not (mu == 1 or (isinstance(ma, int) and ma == replicas - 1)):
                    problems.append(f"{name}: {oname(pdb)} (maxUnavailable {mu}, minAvailable {ma}): allow exactly one control-plane "
                                    f"pod down (maxUnavailable: 1 or minAvailable: {replicas - 1})")
            anti = pod_spec(w).get("affinity", {}).get("podAntiAffinity", {})
            terms = [t.get("podAffinityTerm", {}) for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
            terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
            if not any(t.get("topologyKey") == "kubernetes.io/hostname" and t.get("labelSelector", {}).get("matchLabels")
                       and matches(t["labelSelector"]["matchLabels"], labels) for t in terms):
                problems.append(f"{where}: no pod anti-affinity on kubernetes.io/hostname among the control-plane pods")
            problems += self.control_url_problems(name, objs, w, c, replicas)
        expect_none(self, problems)

    def control_url_problems(self, name, objs, control, container, replicas):
        """The proxies' SIDECAR_CONTROL_URL: at least two URLs, one scheme (https exactly
        when the control plane has a certificate), each the API port of a control-plane
        pod or of a Service in front of them, and every pod listed when pods are."""
        problems = []
        ns = control["metadata"].get("namespace", "default")
        api = listen_ports("control", effective_env(objs, container))[0]
        labels = control["spec"]["template"]["metadata"].get("labels", {})
        services = [o for o in objs if o["kind"] == "Service" and o["spec"].get("selector")
                    and matches(o["spec"]["selector"], labels)]
        headless = [s for s in services if s["spec"].get("clusterIP") == "None"
                    and s["metadata"]["name"] == control["spec"].get("serviceName")]
        targets = {}  # host -> (what, ports that reach the API port)
        for s in services:
            ports = {p["port"] for p in s["spec"].get("ports", [])
                     if resolve_port(container, p.get("targetPort", p["port"])) == api}
            if s["spec"].get("clusterIP") != "None":
                for h in dns_names(s["metadata"]["name"], ns):
                    targets[h] = (oname(s), ports)
        for s in headless:
            for i in range(replicas):
                for h in dns_names(f"{control['metadata']['name']}-{i}.{s['metadata']['name']}", ns):
                    targets[h] = (i, {api})
        scheme = "https" if "SIDECAR_TLS_CERT" in effective_env(objs, container) else "http"
        proxies = [(w, c) for w, spec, c in containers_of(objs) if role_of(c) == "proxy"]
        for w, c in proxies:
            where = f"{name}: {oname(w)} container {c['name']}: SIDECAR_CONTROL_URL"
            kind, value = effective_env(objs, c).get("SIDECAR_CONTROL_URL", ("default", settings_of(PROXY_CONFIG)["SIDECAR_CONTROL_URL"]))
            if kind not in ("value", "configmap", "default"):
                problems.append(f"{where}: from {kind}: set it in the proxies' ConfigMap so that it can be checked")
                continue
            urls = split_urls(value)
            if len(urls) < 2:
                problems.append(f"{where}={value!r}: list several control planes, comma-separated (a proxy moves to the next on failure)")
            schemes = {u.split("://", 1)[0] for u in urls}
            if schemes != {scheme}:
                problems.append(f"{where}: schemes {sorted(schemes)}: use {scheme}:// for all (the control plane "
                                f"{'has' if scheme == 'https' else 'has no'} certificate)")
            pods = []
            for u in urls:
                m = re.fullmatch(r"[a-z]+://([^/:]+)(?::(\d+))?/?", u)
                if not m:
                    problems.append(f"{where}: {u!r} is not scheme://host:port")
                    continue
                host, port = m.group(1), int(m.group(2) or (443 if u.startswith("https") else 80))
                if host not in targets:
                    problems.append(f"{where}: {host} is neither a control-plane pod ({replicas} replicas behind "
                                    f"{[oname(s) for s in headless]}) nor a Service of them in namespace {ns}")
                    continue
                what, ports = targets[host]
                if port not in ports:
                    problems.append(f"{where}: {u}: port {port} does not reach the API port {api}")
                if isinstance(what, int):
                    pods.append(what)
            if len(set(urls)) != len(urls):
                problems.append(f"{where}: lists a URL twice")
            missing = sorted(set(range(replicas)) - set(pods))
            if pods and missing:
                problems.append(f"{where}: does not list control-plane pod(s) {missing}: proxies cannot fail over to them")
        if not proxies:
            problems.append(f"{name}: no proxy workload")
        return problems


# --- Prometheus --------------------------------------------------------------------------


def alert_rules():
    doc = load_yaml(ALERTS)
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


class PrometheusTest(unittest.TestCase):
    """deploy/prometheus: the rules load, their unit tests pass and cover every alert, and
    they use only metrics the binaries export."""

    def promtool(self, *args):
        self.assertTrue(PROMTOOL, "promtool is not installed: scripts/install-test-deps.sh installs Debian's prometheus package")
        out = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=ALERTS.parent)
        self.assertEqual(out.returncode, 0, f"promtool {' '.join(args)} failed:\n{out.stdout}{out.stderr}")

    def test_promtool_check_rules(self):
        self.promtool("check", "rules", ALERTS.name)

    def test_promtool_test_rules(self):
        self.promtool("test", "rules", ALERTS_TEST.name)

    def test_alerts_use_only_exported_metrics(self):
        registry = registered_metrics()
        problems = []
        for r in alert_rules():
            for m in sorted(promql_metrics(r["expr"])):
                if not metric_exists(m, registry):
                    problems.append(f"alert {r['alert']}: {m} is not a metric the binaries export")
        expect_none(self, problems)

    def test_alerts_have_runbook_text(self):
        problems = []
        for r in alert_rules():
            ann = r.get("annotations") or {}
            for key in ("summary", "description", "runbook"):
                if not str(ann.get(key, "")).strip():
                    problems.append(f"alert {r['alert']}: no {key} annotation")
            if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"alert {r['alert']}: severity label is not critical, warning or info")
        expect_none(self, problems)

    def test_every_alert_is_tested_firing_and_not_firing(self):
        doc = load_yaml(ALERTS_TEST)
        registry = registered_metrics()
        firing, quiet, problems = set(), set(), []
        for t in doc["tests"]:
            for s in t.get("input_series", []):
                m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", s["series"]).group(0)
                if not metric_exists(m, registry):
                    problems.append(f"test {t.get('name')!r}: input series {m} is not a metric the binaries export")
            for ev in t.get("alert_rule_test", []):
                (firing if ev.get("exp_alerts") else quiet).add(ev["alertname"])
        names = [r["alert"] for r in alert_rules()]
        for n in names:
            if n not in firing:
                problems.append(f"alert {n}: no test in which it fires")
            if n not in quiet:
                problems.append(f"alert {n}: no test in which it must not fire (exp_alerts: [])")
        for n in sorted((firing | quiet) - set(names)):
            problems.append(f"{rel(ALERTS_TEST)} tests {n}, which alerts.yml does not define")
        expect_none(self, problems)


# --- Grafana -----------------------------------------------------------------------------


def dashboard_queries():
    """[(where, PromQL)] of every panel target and query variable."""
    d = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            for t in p.get("targets", []):
                out.append((f"panel {p.get('title')!r} target {t.get('refId')}", t.get("expr", "")))
    walk(d.get("panels", []))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            out.append((f"variable {v['name']!r}", q.get("query", "") if isinstance(q, dict) else q or ""))
    return d, out


def grafana_to_promql(expr):
    """A panel query with Grafana's variables replaced, as Prometheus would get it."""
    expr = re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)
    m = re.fullmatch(r"\s*label_values\((?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\)\s*", expr)
    if m:
        expr = m.group(1) or "up"
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


class GrafanaTest(unittest.TestCase):
    """deploy/grafana: the dashboard loads, every panel queries real metrics, and
    panel_metrics.txt lists exactly what it queries."""

    def test_dashboard_parses_and_every_panel_has_a_query(self):
        d, _ = dashboard_queries()
        problems = []
        names = [v.get("name") for v in d.get("templating", {}).get("list", [])]
        if "DS_PROMETHEUS" not in names:
            problems.append("no DS_PROMETHEUS datasource variable")
        ids = []

        def walk(panels):
            for p in panels:
                ids.append(p.get("id"))
                if p.get("type") == "row":
                    walk(p.get("panels", []))
                    continue
                targets = [t for t in p.get("targets", []) if t.get("expr", "").strip()]
                if not targets:
                    problems.append(f"panel {p.get('title')!r} has no query")
                for ds in [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]:
                    if not ds or ds.get("uid") != "${DS_PROMETHEUS}":
                        problems.append(f"panel {p.get('title')!r}: datasource {ds} is not ${{DS_PROMETHEUS}}")
        walk(d.get("panels", []))
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            problems.append(f"panel ids used twice: {dup}")
        expect_none(self, problems)

    def test_panel_metrics_lists_exactly_the_metrics_queried(self):
        _, queries = dashboard_queries()
        queried = {}
        for where, q in queries:
            for m in promql_metrics(q):
                queried.setdefault(m, where)
        lines = [l.strip() for l in PANEL_METRICS.read_text().split("\n") if l.strip()]
        dup = sorted({l for l in lines if lines.count(l) > 1})
        problems = [f"{rel(PANEL_METRICS)} lists {l} twice" for l in dup]
        problems += [f"{where} queries {m}, which {rel(PANEL_METRICS)} does not list"
                     for m, where in sorted(queried.items()) if m not in lines]
        problems += [f"{rel(PANEL_METRICS)} lists {m}, which no panel queries" for m in sorted(set(lines) - set(queried))]
        expect_none(self, problems)

    def test_every_metric_queried_is_exported(self):
        registry = registered_metrics()
        _, queries = dashboard_queries()
        problems = [f"{where}: {m} is not a metric the binaries export"
                    for where, q in queries for m in sorted(promql_metrics(q)) if not metric_exists(m, registry)]
        lines = [l.strip() for l in PANEL_METRICS.read_text().split("\n") if l.strip()]
        problems += [f"{rel(PANEL_METRICS)}: {m} is not a metric the binaries export" for m in lines if not metric_exists(m, registry)]
        expect_none(self, problems)

    def test_queries_are_valid_promql(self):
        self.assertTrue(PROMTOOL, "promtool is not installed: scripts/install-test-deps.sh installs Debian's prometheus package")
        _, queries = dashboard_queries()
        with tempfile.TemporaryDirectory() as d:
            # One rule file per query, so that promtool's error names it.
            bad = []
            for k, (where, q) in enumerate(queries):
                f = Path(d, f"q{k}.json")
                f.write_text(json.dumps({"groups": [{"name": "q", "rules": [{"record": "dashboard:q", "expr": grafana_to_promql(q)}]}]}))
                out = subprocess.run([PROMTOOL, "check", "rules", str(f)], capture_output=True, text=True)
                if out.returncode != 0:
                    bad.append(f"{where}: {q}\n  {out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()}")
        expect_none(self, bad)


if __name__ == "__main__":
    if not KUBECTL:
        print("NOTICE: kubectl not found: the Kubernetes checks are skipped", file=sys.stderr)
    unittest.main(verbosity=2)
