#!/usr/bin/env bash
# Checks the deployment files offline, with the tools scripts/deploy-tools.sh installs in .venv:
#   - hadolint on the Dockerfile (any finding fails), plus the facts the chart relies on: base
#     images pinned by digest, only the production build (--no-default-features), a dependency
#     layer that loads the workspace, the revision passed in; .dockerignore lets in every file a
#     COPY takes and keeps build output, git history and virtualenvs out;
#   - helm lint (strict) of helm/mongo-projector, with default values and with every feature on;
#   - helm render of several value sets, every manifest validated strictly (unknown fields are
#     errors) against the Kubernetes API schemas of the oldest supported and the newest release;
#     ServiceMonitor and PrometheusRule against the schemas in helm/mongo-projector/ci/crd-schemas;
#   - what the manifests must say: RollingUpdate with leases (Recreate and at most one replica
#     without), probes, security context, replicas spread over nodes by an anti-affinity on the
#     selector labels, a `helm test` pod that checks /readyz on the Service's port under the same
#     security context, the grace period longer than the drain deadline, MONGODB_URI from the
#     Secret, the TOML config equal to the values it was rendered from (and the default equal to
#     config/example.toml);
#   - values.schema.json accepts the shipped values and rejects each case of ci/rejected.yaml;
#   - the chart README documents every value and its sidecar example validates;
#   - docker-compose.yml runs a replica set and the image the way the README says;
#   - .github/workflows/release.yml publishes the image the chart deploys by default, for both
#     platforms, with the chart packaged at the release's version and permissions kept narrow.
# With PROJECTOR_CHECK_BIN set to a mongo-projector binary, each rendered config.toml is also
# checked with `mongo-projector check-config`.
# Prints one line per check and exits non-zero if any fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
if [[ ! -x "$venv/bin/python" || ! -x "$venv/bin/hadolint" ]] \
  || ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
  echo "check-deploy: the tools are missing from $venv: run scripts/deploy-tools.sh first" >&2
  exit 2
fi

export CHECK_DEPLOY_ROOT="$root"
export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" - <<'PY'
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import jsonschema
import kubernetes_validate.utils as kv
import yaml

ROOT = os.environ["CHECK_DEPLOY_ROOT"]
CHART = os.path.join(ROOT, "helm", "mongo-projector")
CI = os.path.join(CHART, "ci")
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the pinned
# kubernetes-validate knows.
KUBE_VERSIONS = ["1.27.0", kv.latest_version()]
# The metric catalogue the daemon exports, from the project README's metric table (which
# tests/docs.rs keeps equal to the code); alert expressions may only use these (and `up`).
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    METRICS = set(re.findall(r"(?m)^\| `(mongo_projector_[a-z_]+)` \|", f.read()))
COMMAND = ["mongo-projector"]
ARGS = ["run", "--config", "/etc/mongo-projector/config.toml", "--log-format", "json"]

passed = 0
failed = []


def check(name, fn):
    """Runs one check; a check fails by raising (AssertionError or any tool error)."""
    global passed
    try:
        note = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the others
        msg = str(e) or type(e).__name__
        failed.append(f"{name}: {msg}")
        print(f"FAIL {name}\n     {msg}".replace("\n", "\n     "), flush=True)
        return
    passed += 1
    print(f"ok   {name}" + (f" ({note})" if note else ""), flush=True)


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def load_yaml(*parts):
    return yaml.safe_load(read(*parts))


def merge(base, override):
    """Helm's coalescing: maps merge, anything else (lists included) replaces, null deletes."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def drop_nulls(v):
    if isinstance(v, dict):
        return {k: drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [drop_nulls(x) for x in v]
    return v


def seconds(duration):
    """Seconds in a duration string as values.schema.json allows it (units ms, s, m, h, d)."""
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"([0-9]+)(ms|s|m|h|d)", duration)
    assert parts and re.fullmatch(r"(?:[0-9]+(?:ms|s|m|h|d) ?)+", duration), duration
    return sum(int(n) * scale[u] for n, u in parts)


# ---------------------------------------------------------------------------------------------
# Dockerfile
def hadolint():
    r = subprocess.run(["hadolint", "--no-color", "--failure-threshold", "style", "Dockerfile"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr).strip() or f"hadolint exited {r.returncode}"
    v = subprocess.run(["hadolint", "--version"], capture_output=True, text=True).stdout.strip()
    return v


def dockerfile_instructions():
    """The Dockerfile as (stage index, instruction, arguments): continuation lines joined, comments
    and parser directives dropped; stage 0 is the first FROM."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in read("Dockerfile").splitlines() if not line.lstrip().startswith("#")))
    out, stage = [], -1
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stage += 1
        out.append((stage, instruction, " ".join(args.split())))
    return out


def dockerfile_facts():
    text = read("Dockerfile")
    need = {
        "a numeric non-root USER": r"(?m)^USER [1-9][0-9]*(:[0-9]+)?\s*$",
        "EXPOSE 9464": r"(?m)^EXPOSE 9464\s*$",
        "the example config at /etc/mongo-projector/config.toml":
            r"(?m)^COPY .*config/example.toml /etc/mongo-projector/config.toml",
        "the container command": re.escape(json.dumps(ARGS).replace('","', '", "')),
    }
    missing = [what for what, pattern in need.items() if not re.search(pattern, text)]
    assert not missing, "Dockerfile lacks: " + "; ".join(missing)
    steps = dockerfile_instructions()
    problems = []

    # Base images: name:tag@sha256:<digest>, so that a moved tag changes nothing that is built.
    stages = []
    for _, instruction, args in steps:
        if instruction != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--platform=")]
        image = words[0]
        if image not in stages:
            if not re.fullmatch(r"[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}", image):
                problems.append(f"base image {image} is not pinned as name:tag@sha256:<digest>")
        stages.append(words[2] if len(words) > 2 and words[1].upper() == "AS" else image)

    # Every cargo build is the production build: no embedded server, demo or bench.
    builds = [(i, args) for i, (_, instruction, args) in enumerate(steps)
              if instruction == "RUN" and "cargo build" in args]
    want = "cargo build --release --locked -p mongo-projector --no-default-features"
    for _, args in builds:
        for command in re.findall(r"cargo build[^&;|]*", args):
            if not command.strip().startswith(want) or "embedded" in command:
                problems.append(f"'{command.strip()}' is not '{want}'")
    if len(builds) < 2:
        problems.append(f"{len(builds)} cargo build steps: want a dependency layer and the real build")
    else:
        # The dependency layer: every workspace member's manifest copied before it, and a stand-in
        # for each target the member declares or Cargo finds, or the workspace does not load.
        first, last = builds[0][0], builds[-1][0]
        copied = " ".join(a for _, ins, a in steps[:first] if ins == "COPY")
        stand_ins = builds[0][1]
        members = tomllib.loads(read("Cargo.toml"))["workspace"]["members"]
        for member in members:
            base = "" if member == "." else member.rstrip("/") + "/"
            manifest = base + "Cargo.toml"
            if not re.search(r"(^|\s)" + re.escape(manifest) + r"(\s|$)", copied):
                problems.append(f"the dependency layer does not copy {manifest}")
            declared = tomllib.loads(read(manifest))
            targets = [t for t in ("src/lib.rs", "src/main.rs")
                       if os.path.exists(os.path.join(ROOT, base, t))]
            targets += [b["path"] for b in declared.get("bin", []) if "path" in b]
            targets += [b.get("path", f"benches/{b['name']}.rs") for b in declared.get("bench", [])]
            for target in sorted(set(targets)):
                if not re.search(r"(?<![\w/.-])" + re.escape(base + target) + r"(?![\w/.-])", stand_ins):
                    problems.append(f"the dependency layer has no stand-in for {base + target}")
        # The real build: the build script is there, and the revision reaches it.
        before = steps[first + 1:last]
        if os.path.exists(os.path.join(ROOT, "build.rs")) and not any(
                ins == "COPY" and re.search(r"(^|\s)build.rs\s", a) for _, ins, a in before):
            problems.append("build.rs is not copied before the build")
        builder = steps[last][0]
        if not any(s == builder and ins == "ARG" and re.fullmatch(r"REVISION(=.*)?", a)
                   for s, ins, a in steps[:last]):
            problems.append("no ARG REVISION in the builder stage")
        revision = re.compile(r'PROJECTOR_BUILD_REVISION="?\$\{?REVISION\}?"?')
        if not (revision.search(steps[last][2]) or any(
                s == builder and ins == "ENV" and revision.search(a) for s, ins, a in before)):
            problems.append("the build does not get REVISION as PROJECTOR_BUILD_REVISION")
    # At run time MONGO_PROJECTOR_* variables are configuration overrides (an unknown one is an
    # error), and the revision is compiled in: neither belongs in the image's environment.
    final = steps[-1][0]
    for stage, instruction, args in steps:
        if instruction == "ENV" and ("MONGO_PROJECTOR_" in args
                                     or (stage == final and "PROJECTOR_BUILD_REVISION" in args)):
            problems.append(f"ENV {args} (stage {stage})")
    assert not problems, "Dockerfile: " + "; ".join(problems)
    return f"{len(stages)} base images pinned by digest, {len(builds)} builds without the embedded server"


def dockerignore_patterns():
    """.dockerignore as (negated, regex) pairs, with Docker's rules for the syntax the file uses:
    patterns are relative to the context root, `*` and `?` stay within one path segment, `**`
    spans any number, and a pattern that matches a directory matches everything below it."""
    out = []
    for line in read(".dockerignore").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        assert "[" not in pattern and "\\" not in pattern, f"unsupported .dockerignore pattern {line}"
        rx = re.sub(r"\\\*\\\*/|\\\*\\\*|\\\*|\\\?",
                    lambda m: {"\\*\\*/": "(?:.*/)?", "\\*\\*": ".*", "\\*": "[^/]*", "\\?": "[^/]"}[m.group()],
                    re.escape(pattern))
        out.append((negated, re.compile(rx)))
    return out


def in_build_context(path, patterns):
    """Whether `path` reaches the builder: the last pattern that matches it or a parent decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negated, rx in patterns:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negated
    return not excluded


def build_context():
    """Every file a COPY takes from the build context is in it; build output, git history and
    virtualenvs are not."""
    patterns = dockerignore_patterns()
    problems, files = [], 0
    for _, instruction, args in dockerfile_instructions():
        if instruction not in ("COPY", "ADD"):
            continue
        words = args.split()
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            full = os.path.join(ROOT, source)
            if not os.path.exists(full):
                problems.append(f"COPY source {source} does not exist")
                continue
            paths = [source] if os.path.isfile(full) else [
                os.path.relpath(os.path.join(d, f), ROOT)
                for d, _, names in os.walk(full) for f in names]
            for path in paths:
                files += 1
                if not in_build_context(path, patterns):
                    problems.append(f"{path} (COPY {source}) is left out by .dockerignore")
    for local in ("target/release/mongo-projector", ".git/HEAD", ".venv/bin/python",
                  "mongo-sim/target/debug/mongo-sim"):
        if in_build_context(local, patterns):
            problems.append(f"{local} is in the build context")
    assert not problems, "\n".join(problems[:20])
    return f"{files} copied files in the context; target/, .git/, .venv/ out"


# ---------------------------------------------------------------------------------------------
# Helm chart
chart = helm.Chart.load(CHART)
defaults = chart.values
all_features = load_yaml("helm", "mongo-projector", "ci", "all-features-values.yaml")


def lint(values, label):
    def run():
        for version in KUBE_VERSIONS:
            report = helm.lint(CHART, values, strict=True, kube_version="v" + version)
            bad = [m for m in report["messages"] if m["severity"] >= 2] + \
                [{"path": "", "error": e} for e in report["errors"]]
            assert not bad, "\n".join(f"{m['path']}: {m['error']}" for m in bad)
        return "strict, Kubernetes " + " and ".join(KUBE_VERSIONS)
    check(f"helm lint ({label})", run)


crd_schemas = {}
for name in os.listdir(os.path.join(CI, "crd-schemas")):
    with open(os.path.join(CI, "crd-schemas", name), encoding="utf-8") as f:
        schema = json.load(f)
    crd_schemas[schema["properties"]["kind"]["const"]] = schema


def validate_manifest(doc):
    """Strict schema validation of one manifest; returns what it was validated against."""
    kind = doc.get("kind")
    if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        assert kind in crd_schemas, f"no schema for {kind} in ci/crd-schemas"
        jsonschema.Draft202012Validator(crd_schemas[kind]).validate(doc)
        return "Prometheus Operator CRD subset"
    for version in KUBE_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.SchemaNotFoundError as e:
            raise AssertionError(e.message)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise AssertionError(f"Kubernetes {e.version}: {path}: {e.message}")
    return "Kubernetes " + " and ".join(KUBE_VERSIONS) + ", strict"


def render(values, release, namespace):
    out = chart.render(values, name=release, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path.split("/", 1)[1], doc))
    return docs, out


def one(docs, kind):
    found = [d for _, d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def deployment_facts(docs, values):
    dep = one(docs, "Deployment")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    if values["config"].get("leases", {}).get("enabled", True):
        # A new pod starts in standby before the old one releases its leases.
        want = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        assert spec["strategy"] == want, f"strategy {spec['strategy']}, want {want}"
    else:
        assert spec["strategy"] == {"type": "Recreate"}, f"strategy {spec['strategy']}, want Recreate"
        assert spec["replicas"] in (0, 1), f"replicas {spec['replicas']}: without leases at most one is safe"
    assert spec["replicas"] == values["replicaCount"], f"replicas {spec['replicas']}"
    deadline = seconds(values["config"]["shutdown"]["deadline"])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > deadline, f"terminationGracePeriodSeconds {grace} <= drain deadline {deadline}s"
    psc = pod["securityContext"]
    assert psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot"
    (c,) = pod["containers"]
    assert c["command"] == COMMAND and c["args"] == ARGS, f"command {c['command']} {c['args']}"
    sc = c["securityContext"]
    want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    for k, v in want.items():
        assert sc.get(k) == v, f"container securityContext.{k} is {sc.get(k)!r}, want {v!r}"
    env = {e["name"]: e for e in c["env"]}
    secret = values["mongodb"]["existingSecret"] or f"{dep['metadata']['name']}-mongodb"
    if values["mongodb"].get("uriFrom", "env") == "file":
        # The Secret mounted read-only, named by MONGODB_URI_FILE; no URI in the environment.
        assert "MONGODB_URI" not in env, "MONGODB_URI set although uriFrom is file"
        path = env["MONGODB_URI_FILE"]["value"]
        (vol,) = [v for v in pod["volumes"] if "secret" in v]
        assert vol["secret"]["secretName"] == secret, vol
        assert vol["secret"]["items"] == [{"key": values["mongodb"]["secretKey"], "path": "uri"}], vol
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
        assert mount.get("readOnly") is True and path == mount["mountPath"] + "/uri", (mount, path)
    else:
        uri = env["MONGODB_URI"]
        assert "value" not in uri and uri["valueFrom"]["secretKeyRef"] == {
            "name": secret, "key": values["mongodb"]["secretKey"]}, f"MONGODB_URI {uri}"
        assert "MONGODB_URI_FILE" not in env
    port = int(values["config"]["http"]["address"].rsplit(":", 1)[1])
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}], c["ports"]
    probes = values["probes"]
    for key, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                      ("startupProbe", "/startupz")):
        enabled = probes[key.removesuffix("Probe")]["enabled"]
        assert (key in c) == enabled, f"{key} present: {key in c}, enabled: {enabled}"
        if enabled:
            assert c[key]["httpGet"] == {"path": path, "port": "http"}, f"{key} {c[key]}"
    assert "memory" in c["resources"].get("limits", {}), "no memory limit"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    toml_text = one(docs, "ConfigMap")["data"]["config.toml"]
    assert annotations.get("checksum/config") == hashlib.sha256(
        toml_text.encode()).hexdigest(), "checksum/config is not the config's sha256"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/mongo-projector"].get("readOnly") is True, "config mount not read-only"
    svc = one(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "http", "Service does not target port http"
    return f"grace {grace}s > deadline {deadline:g}s"


def pod_labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def anti_affinity_facts(docs, values):
    """The pod's affinity is .Values.affinity plus the chart's spread rule, which selects exactly
    the Deployment's pods (its selector labels) over podAntiAffinity.topologyKey."""
    dep = one(docs, "Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    assert pod_labels_match(selector, dep["spec"]["template"]["metadata"]["labels"]), "selector"
    got = dep["spec"]["template"]["spec"].get("affinity", {})
    own = values.get("affinity") or {}
    for key, rule in own.items():
        assert got.get(key) == rule, f"affinity.{key} {got.get(key)}, want the values' {rule}"
    if "podAntiAffinity" in own:
        return "the values' own podAntiAffinity"
    spread = values["podAntiAffinity"]
    anti = got.get("podAntiAffinity")
    if spread["mode"] == "none":
        assert anti is None, f"podAntiAffinity {anti} with mode none"
        return "none"
    assert anti, "no podAntiAffinity"
    if spread["mode"] == "preferred":
        assert list(anti) == ["preferredDuringSchedulingIgnoredDuringExecution"], anti
        (weighted,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        assert weighted["weight"] == spread["weight"], f"weight {weighted['weight']}"
        term = weighted["podAffinityTerm"]
    else:
        assert list(anti) == ["requiredDuringSchedulingIgnoredDuringExecution"], anti
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == spread["topologyKey"], f"topologyKey {term['topologyKey']}"
    assert term["labelSelector"] == {"matchLabels": selector}, (
        f"labelSelector {term['labelSelector']}, want the Deployment's selector {selector}")
    return f"{spread['mode']} over {spread['topologyKey']}"


def default_spreads_over_nodes():
    docs, _ = render({}, "mongo-projector", "default")
    dep = one(docs, "Deployment")
    anti = dep["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
    terms = anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    assert any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
               and t["podAffinityTerm"]["labelSelector"] == {"matchLabels": dep["spec"]["selector"]["matchLabels"]}
               for t in terms), f"default podAntiAffinity {anti}"
    return "preferred, kubernetes.io/hostname, the selector labels"


def helm_test_facts(docs, values):
    """`helm test`: one hook Pod that asks the Service's port for /readyz, under the same
    restrictive security context as the daemon, and which is not one of the daemon's pods."""
    pods = [d for _, d in docs if d["kind"] == "Pod"]
    if not values["test"]["enabled"]:
        assert not pods, f"test.enabled is false, rendered {[p['metadata']['name'] for p in pods]}"
        return "off"
    assert len(pods) == 1, f"{len(pods)} test pods"
    pod = pods[0]
    assert pod["metadata"].get("annotations", {}).get("helm.sh/hook") == "test", "no helm.sh/hook: test"
    spec = pod["spec"]
    assert spec.get("restartPolicy") == "Never", f"restartPolicy {spec.get('restartPolicy')}"
    assert spec.get("automountServiceAccountToken") is False, "the test pod mounts a token"
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, "test pod securityContext.runAsNonRoot"
    (c,) = spec["containers"]
    sc = c.get("securityContext", {})
    want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    for k, v in want.items():
        assert sc.get(k) == v, f"test container securityContext.{k} is {sc.get(k)!r}, want {v!r}"
    assert re.search(r"@sha256:[0-9a-f]{64}$", c["image"]), f"test image {c['image']} not pinned by digest"
    svc = one(docs, "Service")
    url = (f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:"
           f"{svc['spec']['ports'][0]['port']}/readyz")
    argv = c.get("command", []) + c.get("args", [])
    urls = [a for a in argv if re.match(r"https?://", a)]
    assert urls == [url], f"test pod asks {urls}, want [{url}]"
    assert "wget" in " ".join(argv), "the test pod does not run wget"
    for kind in ("Service", "Deployment"):
        doc = one(docs, kind)
        sel = doc["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        assert not pod_labels_match(sel, pod["metadata"]["labels"]), f"the {kind}'s selector matches the test pod"
    return url


def config_facts(docs, values):
    text = one(docs, "ConfigMap")["data"]["config.toml"]
    parsed = tomllib.loads(text)
    want = drop_nulls(values["config"])
    assert parsed == want, "config.toml differs from .Values.config:\n" + json.dumps(
        {"rendered": parsed, "values": want}, indent=1, sort_keys=True)[:3000]
    assert "mongodb://" not in text and "mongodb+srv://" not in text, "a URI in the ConfigMap"
    return text


def prometheus_facts(docs, values):
    assert METRICS, "found no metric table in README.md"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == one(docs, "Service")["spec"]["ports"][0]["name"]
    rules = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules}
    want = {"MongoProjectorLagHigh", "MongoProjectorParkedEventsOld", "MongoProjectorDeadLetters",
            "MongoProjectorOplogHeadroomLow", "MongoProjectorNoProgress", "MongoProjectorDown",
            "MongoProjectorAuditDrift", "MongoProjectorWorkerStopped"}
    assert want <= alerts, f"missing alerts {sorted(want - alerts)}"
    unknown = {m for r in rules for m in re.findall(r"\bmongo_projector_[a-z_]+", str(r["expr"]))
               if re.sub(r"_(bucket|sum|count)$", "", m) not in METRICS}
    assert not unknown, f"alerts use metrics the daemon does not export: {sorted(unknown)}"
    ns = one(docs, "Deployment")["metadata"]["namespace"]
    for r in rules:
        if r["alert"].startswith("MongoProjector") and r["alert"] != "MongoProjectorRestartingStreams":
            assert f'namespace="{ns}"' in r["expr"], f"{r['alert']} is not scoped to the release"
    return f"{len(rules)} rules"


def binary_check(toml_text, label):
    binary = os.environ.get("PROJECTOR_CHECK_BIN")
    if not binary:
        return

    def check_config(text):
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        try:
            r = subprocess.run([binary, "check-config", "--config", f.name],
                               capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
        finally:
            os.unlink(f.name)
        return r.returncode, (r.stdout + r.stderr).strip()

    def run():
        rc, out = check_config(toml_text)
        assert rc == 0, out
        return "mongo-projector check-config"
    check("  check-config accepts the rendered config", run)


def schema_matches_code():
    """values.schema.json knows exactly the configuration keys the daemon knows: each table's
    list is read from check-config's own unknown-key message."""
    binary = os.environ["PROJECTOR_CHECK_BIN"]
    config = json.loads(read("helm", "mongo-projector", "values.schema.json"))["properties"]["config"]
    projection = config["properties"]["projections"]["items"]
    minimal = ('[[projections]]\nname = "p"\ndatabase = "d"\nevents = "e"\ntarget = "t"\n'
               'handlers = { A = { "$set" = { a = 1 } } }\n')
    tables = {
        "": ("zzz_unknown = 1\n" + minimal, config),
        "projections[0].": (minimal + "zzz_unknown = 1\n", projection),
        "projections[0].parking.": (minimal + "[projections.parking]\nzzz_unknown = 1\n",
                                    projection["properties"]["parking"]),
        "projections[0].fields.": (minimal + "[projections.fields]\nzzz_unknown = 1\n",
                                   projection["properties"]["fields"]),
    }
    for table in ("http", "checkpoints", "shutdown", "source", "leases"):
        tables[table + "."] = (f"[{table}]\nzzz_unknown = 1\n" + minimal,
                               config["properties"][table])
    problems = []
    for prefix, (text, schema) in tables.items():
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        try:
            r = subprocess.run([binary, "check-config", "--config", f.name],
                               capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        m = re.search(re.escape(prefix) + r"zzz_unknown: unknown key \(known keys: ([^)]*)\)",
                      r.stdout + r.stderr)
        assert m, f"check-config did not list the keys of {prefix or 'the top level'}:\n{r.stdout}{r.stderr}"
        code, chart = set(m.group(1).split(", ")), set(schema["properties"])
        if code != chart:
            problems.append(f"config.{prefix or '(top)'}: only in the daemon {sorted(code - chart)}, "
                            f"only in values.schema.json {sorted(chart - code)}")
    assert not problems, "\n".join(problems)
    return f"{len(tables)} tables"


def replicas_need_leases():
    """Refused by values.schema.json, and by the template itself (for a chart rendered without
    schema validation)."""
    try:
        chart.render({"replicaCount": 2, "config": {"leases": {"enabled": False}}},
                     name="x", namespace="x", is_install=True)
    except helm.HelmValuesError:
        pass
    except helm.HelmError as e:
        assert "leases" in str(e), str(e)
    else:
        raise AssertionError("rendered two replicas without leases")
    return "refused"


def http_off_needs_probes_off():
    off = {"config": {"http": {"enabled": False}}}
    try:
        chart.render(off, name="x", namespace="x", is_install=True)
    except helm.HelmError as e:
        assert "config.http.enabled is false" in str(e), str(e)
    else:
        raise AssertionError("rendered probes against a disabled HTTP endpoint")
    no_probe = {"enabled": False}
    chart.render(merge(off, {"probes": {"startup": no_probe, "liveness": no_probe,
                                        "readiness": no_probe}}),
                 name="x", namespace="x", is_install=True)
    return "refused with probes on, rendered with them off"


OPTIONAL = {"ServiceMonitor", "PrometheusRule", "PodDisruptionBudget"}


def scenario(label, overrides, release, namespace, optional):
    """Renders one value set and checks every manifest; `optional` is the optional kinds expected."""
    values = merge(defaults, overrides)
    holder = {}

    def do_render():
        docs, _ = render(overrides, release, namespace)
        holder["docs"] = docs
        return ", ".join(d["kind"] for _, d in docs)
    check(f"helm render ({label})", do_render)
    docs = holder.get("docs")
    if docs is None:
        return
    for path, doc in docs:
        check(f"  validate {path} {doc['kind']}/{doc['metadata']['name']}",
              lambda doc=doc: validate_manifest(doc))
    check("  deployment facts", lambda: deployment_facts(docs, values))
    check("  pod anti-affinity", lambda: anti_affinity_facts(docs, values))
    check("  helm test pod", lambda: helm_test_facts(docs, values))
    toml_holder = {}

    def cfg():
        toml_holder["text"] = config_facts(docs, values)
        return "TOML parses back to the values"
    check("  config.toml equals .Values.config", cfg)
    if "text" in toml_holder:
        binary_check(toml_holder["text"], label)

    def optional_kinds():
        kinds = {d["kind"] for _, d in docs} & OPTIONAL
        assert kinds == set(optional), f"optional resources {sorted(kinds)}, want {sorted(optional)}"
        return ", ".join(sorted(kinds)) or "none"
    check("  optional resources", optional_kinds)
    if "PrometheusRule" in optional:
        check("  ServiceMonitor and alerts", lambda: prometheus_facts(docs, values))


def default_config_is_example():
    example = tomllib.loads(read("config", "example.toml"))
    chart_config = drop_nulls(defaults["config"])
    extra = sorted(set(chart_config) - set(example))
    assert set(extra) <= {"http"}, f"chart config has sections the example lacks: {extra}"
    for key in example:
        assert chart_config.get(key) == example[key], (
            f"config.{key} differs from config/example.toml:\n"
            f"chart:   {json.dumps(chart_config.get(key), sort_keys=True)}\n"
            f"example: {json.dumps(example[key], sort_keys=True)}")
    return "the chart's default config is config/example.toml" + (" plus [http]" if extra else "")


def schema_accepts():
    for label, values in (("defaults", None), ("all features", all_features)):
        chart.validate_schema(values)
    return "defaults and ci/all-features-values.yaml"


def schema_rejects():
    cases = [c for c in yaml.safe_load_all(read("helm", "mongo-projector", "ci", "rejected.yaml")) if c]
    accepted = []
    for case in cases:
        why, values = case["why"], case["values"]
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError:
            continue
        accepted.append(why)
    assert not accepted, "values.schema.json accepted: " + "; ".join(accepted)
    # And an install with such values fails at render time too, not in the cluster.
    try:
        chart.render(cases[0]["values"], name="x", namespace="x", is_install=True)
    except helm.HelmError:
        pass
    else:
        raise AssertionError(f"render accepted values that break the schema: {cases[0]['why']}")
    return f"{len(cases)} bad values files rejected"


def flatten(v, prefix=""):
    """Documented value paths: leaves, with config.* only to its second level."""
    if isinstance(v, dict) and v and not (prefix.startswith("config.") and prefix.count(".") >= 2) \
            and prefix not in ("resources", "test.resources", "podSecurityContext", "securityContext") \
            and not prefix.startswith("prometheusRule.alerts."):
        for k, x in v.items():
            yield from flatten(x, f"{prefix}{'.' if prefix else ''}{k}")
    else:
        yield prefix


def readme_documents_values():
    text = read("helm", "mongo-projector", "README.md")
    missing = [p for p in flatten(defaults) if f"`{p}`" not in text]
    assert not missing, "helm/mongo-projector/README.md does not document: " + ", ".join(missing)
    return f"{len(list(flatten(defaults)))} values"


def sidecar_example():
    text = read("helm", "mongo-projector", "README.md")
    section = text.split("## Sidecar", 1)
    assert len(section) == 2, "the chart README has no '## Sidecar' section"
    blocks = re.findall(r"```yaml\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    docs = [d for b in blocks for d in yaml.safe_load_all(b) if d and "kind" in d]
    assert docs, "no manifest in the sidecar example"
    seen = False
    for doc in docs:
        validate_manifest(doc)
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                if c["name"] == "mongo-projector":
                    seen = True
                    assert c["args"] == ARGS, f"sidecar args {c['args']}"
                    assert any(e["name"] == "MONGODB_URI" and "secretKeyRef" in e.get("valueFrom", {})
                               for e in c["env"]), "sidecar MONGODB_URI not from a Secret"
    assert seen, "no mongo-projector container in the sidecar Deployment"
    return f"{len(docs)} manifests, strict"


def compose_facts():
    compose = load_yaml("docker-compose.yml")
    services = compose["services"]
    mongo, projector = services["mongo"], services["mongo-projector"]
    assert re.match(r"^mongo:7(\.|$)", mongo["image"]), f"mongo image {mongo['image']}"
    command = " ".join(mongo["command"]) if isinstance(mongo["command"], list) else mongo["command"]
    assert "--replSet rs0" in command, "mongod does not start as replica set rs0"
    assert "rs.initiate" in json.dumps(mongo["healthcheck"]["test"]), "no rs.initiate in the healthcheck"
    assert projector["build"]["dockerfile"] == "Dockerfile", projector["build"]
    env = projector["environment"]
    assert "replicaSet=rs0" in env["MONGODB_URI"], env
    assert projector["depends_on"]["mongo"]["condition"] == "service_healthy", projector["depends_on"]
    grace = seconds(projector["stop_grace_period"])
    deadline = seconds(tomllib.loads(read("config", "example.toml"))["shutdown"]["deadline"])
    assert grace > deadline, f"stop_grace_period {grace}s <= drain deadline {deadline}s"
    return "MongoDB " + mongo["image"].split(":", 1)[1] + " replica set rs0"


def release_publishes_the_default_image():
    """The chart's default image is what .github/workflows/release.yml publishes: the repository's
    GHCR image, tagged with the version the chart is packaged at (its appVersion)."""
    workspace = tomllib.loads(read("Cargo.toml"))
    url = workspace["workspace"]["package"]["repository"]
    m = re.fullmatch(r"https://github.com/([^/]+/[^/]+?)/?", url)
    assert m, f"Cargo.toml repository {url} is not a GitHub repository"
    image = "ghcr.io/" + m.group(1).lower()
    assert defaults["image"]["repository"] == image, (
        f"values.yaml image.repository {defaults['image']['repository']}, the release publishes {image}")
    assert defaults["image"]["tag"] == "" and defaults["image"]["digest"] == "", "default image pinned past appVersion"
    # The source tree's chart states the version it would be released at, as release.yml packages it.
    version = workspace["package"]["version"]
    meta = load_yaml("helm", "mongo-projector", "Chart.yaml")
    for key in ("version", "appVersion"):
        assert meta[key] == version, f"Chart.yaml {key} {meta[key]}, Cargo.toml version {version}"

    workflow = load_yaml(".github", "workflows", "release.yml")
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert trigger == {"push": {"tags": ["v*"]}}, f"release.yml runs on {trigger}"
    assert workflow.get("permissions") == {}, "release.yml grants permissions to every job"
    jobs = workflow["jobs"]
    scripts = {name: "\n".join(str(step.get("run", "")) for step in job["steps"]) for name, job in jobs.items()}
    steps = {name: job["steps"] for name, job in jobs.items()}
    writers = sorted(n for n, job in jobs.items() if job.get("permissions", {}).get("contents") == "write")
    releasers = sorted(n for n, text in scripts.items() if "gh release create" in text)
    assert releasers and writers == releasers, f"contents: write in {writers}, the release is made in {releasers}"
    run = "\n".join(scripts.values())
    assert 'image=ghcr.io/${REPOSITORY,,}' in run and any(
        s.get("env", {}).get("REPOSITORY") == "${{ github.repository }}" for st in steps.values() for s in st), (
        "release.yml does not publish to ghcr.io/<repository>")
    assert re.search(r'helm package helm/mongo-projector --version "\$VERSION" --app-version "\$VERSION"', run), (
        "release.yml does not package the chart at the release's version")
    builds = [s["with"] for st in steps.values() for s in st
              if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    assert builds, "release.yml builds no image"
    platforms = {p for job in jobs.values()
                 for p in [i.get("platform") for i in job.get("strategy", {}).get("matrix", {}).get("include", [])]}
    assert {"linux/amd64", "linux/arm64"} <= platforms, f"release.yml builds for {sorted(p for p in platforms if p)}"
    for b in builds:
        assert "VERSION=" in b.get("build-args", "") and "REVISION=" in b.get("build-args", ""), \
            "the image build lacks the VERSION and REVISION build arguments"
    pins = [s["uses"] for st in steps.values() for s in st if "uses" in s]
    loose = [u for u in pins if not re.fullmatch(r"[^@]+@[0-9a-f]{40}", u)]
    assert not loose, f"actions not pinned by commit: {loose}"
    return f"{image}:{version}, linux/amd64 and linux/arm64"


# ---------------------------------------------------------------------------------------------
print(f"check-deploy: helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
      f"kubernetes-validate {kv.__version__} (schemas up to {kv.latest_version()})", flush=True)
check("hadolint Dockerfile", hadolint)
check("Dockerfile facts", dockerfile_facts)
check("Docker build context (.dockerignore)", build_context)
lint(None, "default values")
lint(all_features, "every feature on")
scenario("default values", {}, "mongo-projector", "default", optional=())
scenario("every feature on", all_features, "orders", "orders", optional=OPTIONAL)
scenario("paused, no probes, existing account, minAvailable PDB, IPv6 address, no spread, no test", {
    "replicaCount": 0,
    "podAntiAffinity": {"mode": "none"},
    "test": {"enabled": False},
    "serviceAccount": {"create": False, "name": "projectors"},
    "probes": {"startup": {"enabled": False}, "liveness": {"enabled": False},
               "readiness": {"enabled": False}},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": None},
    "config": {"shutdown": {"deadline": "45s"}, "http": {"address": "[::]:8080"}},
}, "paused", "ops", optional=("PodDisruptionBudget",))
scenario("three replicas with leases, PDB, required spread over zones, Service port 80, URI from a file", {
    "replicaCount": 3,
    "mongodb": {"uriFrom": "file", "existingSecret": "atlas", "secretKey": "connection"},
    "podDisruptionBudget": {"enabled": True},
    "podAntiAffinity": {"mode": "required", "topologyKey": "topology.kubernetes.io/zone"},
    "service": {"port": 80},
}, "replicas", "ops", optional=("PodDisruptionBudget",))
scenario("leases disabled: one replica, Recreate, the values' own podAntiAffinity", {
    "config": {"leases": {"enabled": False}},
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": {"app": "mongodb"}}}}]}},
}, "single", "ops", optional=())
check("replicas spread over nodes by default", default_spreads_over_nodes)
check("default config is config/example.toml", default_config_is_example)
check("replicaCount > 1 without leases is refused", replicas_need_leases)
check("http.enabled=false needs the probes off", http_off_needs_probes_off)
if os.environ.get("PROJECTOR_CHECK_BIN"):
    check("values.schema.json knows the daemon's configuration keys", schema_matches_code)
check("values.schema.json accepts the shipped values", schema_accepts)
check("values.schema.json rejects bad values", schema_rejects)
check("chart README documents every value", readme_documents_values)
check("chart README sidecar example", sidecar_example)
check("docker-compose.yml", compose_facts)
check("release.yml publishes the chart's default image", release_publishes_the_default_image)

total = passed + len(failed)
if failed:
    print(f"\ncheck-deploy: {len(failed)} of {total} checks FAILED:", flush=True)
    for f in failed:
        print(f"  - {f.splitlines()[0]}")
    sys.exit(1)
print(f"\ncheck-deploy: all {total} checks passed")
PY
