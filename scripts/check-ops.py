#!/usr/bin/env python3
"""Structure checks of the deployment material that no off-the-shelf tool makes here.

Called by scripts/test-ops (with the venv's Python, which has PyYAML through
kubernetes-validate) after the tools ran:

    check-ops.py RENDERED_DIR GATEWAY_HELP WORKER_HELP OUT_RULES
    check-ops.py --write-prometheusrule    # regenerates k8s/base/prometheusrule.yaml

RENDERED_DIR holds `kubectl kustomize` output per overlay (<name>.yaml). Prints one line per
check group and fails (exit 1) with every problem found.
"""
import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# docs/BENCHMARKS.md: RSS per idle connection in the shape users run (10,000 connections, each
# with its own user channel and a shared one: the largest of round 2's runs) and the gateway at rest.
BYTES_PER_CONNECTION = 15366
BASE_RSS = 12 * 1024 * 1024
PROBLEMS = []


def problem(msg):
    PROBLEMS.append(msg)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def quantity(q):
    """Kubernetes memory quantity in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", str(q))
    if not m:
        raise ValueError(f"quantity {q!r}")
    return float(m.group(1)) * units.get(m.group(2) or "", 1)


def help_names(path):
    with open(path) as f:
        return set(re.findall(r"\bTIDINGS_[A-Z0-9_]+\b", f.read()))


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


# --- Kubernetes -----------------------------------------------------------------------------

CR_FIELDS = {
    # kind: {path: allowed keys}; a strict check of the custom resources' fields we use
    # (kubernetes-validate has no schema for them).
    "ServiceMonitor": {
        "spec": {"jobLabel", "selector", "endpoints", "namespaceSelector"},
        "spec.endpoints[]": {"port", "path", "interval", "scrapeTimeout", "scheme"},
    },
    "PodMonitor": {
        "spec": {"jobLabel", "selector", "podMetricsEndpoints", "namespaceSelector"},
        "spec.podMetricsEndpoints[]": {"port", "path", "interval", "scrapeTimeout", "scheme"},
    },
    "PrometheusRule": {"spec": {"groups"}},
    "ScaledObject": {
        "spec": {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                 "cooldownPeriod", "advanced", "triggers", "idleReplicaCount", "fallback"},
        "spec.triggers[]": {"type", "name", "metadata", "authenticationRef", "metricType"},
        "spec.triggers[].metadata": {"natsServerMonitoringEndpoint", "account", "stream", "consumer",
                                     "lagThreshold", "activationLagThreshold", "useHttps"},
        "spec.advanced": {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount"},
    },
}


def walk(doc, path):
    """Values at a dotted path with [] for lists."""
    items = [doc]
    for part in path.split("."):
        nxt = []
        many = part.endswith("[]")
        key = part[:-2] if many else part
        for it in items:
            v = (it or {}).get(key)
            if v is None:
                continue
            nxt.extend(v if many else [v])
        items = nxt
    return items


def expected_consumers():
    """The worker's durable consumers, read from its source."""
    src = open(os.path.join(ROOT, "worker/src/lib.rs")).read()
    notify = open(os.path.join(ROOT, "shared/src/notify.rs")).read()
    if '"tidings-intake"' not in src or '"tidings-delivery-{channel}"' not in src:
        problem("worker/src/lib.rs: consumer names changed; update k8s/base/worker-scaledobjects.yaml and this check")
    channels = re.findall(r'DeliveryChannel::\w+ => "(\w+)"', notify)
    # in-app is delivered at intake, not through a consumer (worker/src/lib.rs).
    return {"tidings-intake"} | {f"tidings-delivery-{c}" for c in channels if c != "in_app"}


def check_overlay(name, docs, gateway_help, worker_help, adapter_metric, rules_spec):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    one = lambda kind, n: next((d for d in by_kind.get(kind, []) if d["metadata"]["name"] == n), None)
    where = f"{name}:"

    # custom resources: only known fields
    for kind, paths in CR_FIELDS.items():
        for d in by_kind.get(kind, []):
            for path, allowed in paths.items():
                for v in walk(d, path):
                    extra = set(v) - allowed if isinstance(v, dict) else set()
                    if extra:
                        problem(f"{where} {kind}/{d['metadata']['name']} {path}: unknown fields {sorted(extra)}")

    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("Secret", [])}
    kept = {"tidings-gateway": gateway_help, "tidings-worker": worker_help}
    for dep_name, names in kept.items():
        dep = one("Deployment", dep_name)
        if dep is None:
            problem(f"{where} Deployment {dep_name} missing")
            continue
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        c = spec["containers"][0]
        env = {}
        for e in c.get("env", []):
            env[e["name"]] = e.get("value")
        for ref in c.get("envFrom", []):
            if "configMapRef" in ref:
                cm = ref["configMapRef"]["name"]
                if cm not in configmaps:
                    problem(f"{where} {dep_name}: ConfigMap {cm} not rendered")
                env.update(configmaps.get(cm, {}))
            if "secretRef" in ref:
                env.update({k: None for k in secrets.get(ref["secretRef"]["name"], {})})
        for k in env:
            if k.startswith("TIDINGS_") and k not in names:
                problem(f"{where} {dep_name}: {k} is not a setting of `{dep_name} --help`")
        sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
        if not psc.get("runAsNonRoot") or not sc.get("readOnlyRootFilesystem") \
                or sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("allowPrivilegeEscalation") is not False:
            problem(f"{where} {dep_name}: security context must be non-root, read-only root, drop ALL, no privilege escalation")
        probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe")}
        if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
            problem(f"{where} {dep_name}: probes {probes}")
        res = c.get("resources", {})
        if not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory") or not res.get("requests", {}).get("cpu"):
            problem(f"{where} {dep_name}: cpu/memory requests and a memory limit are required")
        if "replicas" in dep["spec"]:
            problem(f"{where} {dep_name}: `replicas` set although an autoscaler owns the count (re-applying would reset it)")
        if not spec.get("topologySpreadConstraints"):
            problem(f"{where} {dep_name}: no topology spread")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            if pdb["metadata"]["name"] == dep_name and not labels_match(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]):
                problem(f"{where} PDB {dep_name} selects no pod of its Deployment")
        if dep_name not in {p["metadata"]["name"] for p in by_kind.get("PodDisruptionBudget", [])}:
            problem(f"{where} {dep_name}: no PodDisruptionBudget")

        if dep_name == "tidings-gateway":
            drain = int(env.get("TIDINGS_DRAIN_MS") or 10000) + int(env.get("TIDINGS_SHUTDOWN_GRACE_MS") or 5000)
            pre = c.get("lifecycle", {}).get("preStop", {})
            pause = pre.get("sleep", {}).get("seconds", 0)
            if not pre:
                problem(f"{where} gateway: no preStop")
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace * 1000 <= pause * 1000 + drain:
                problem(f"{where} gateway: terminationGracePeriodSeconds {grace}s <= preStop {pause}s + drain {drain}ms")
            hpa = one("HorizontalPodAutoscaler", "tidings-gateway")
            if hpa is None:
                problem(f"{where} gateway: no HPA")
                continue
            kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
            pods = kinds.get("Pods", {}).get("pods", {})
            if "Resource" not in kinds or pods.get("metric", {}).get("name") != adapter_metric:
                problem(f"{where} gateway HPA must scale on cpu and on {adapter_metric} (the adapter's rule)")
            target = float(pods.get("target", {}).get("averageValue", 0))
            maxconn = int(env.get("TIDINGS_MAX_CONNECTIONS") or 200000)
            need_req = BASE_RSS + target * BYTES_PER_CONNECTION
            need_lim = BASE_RSS + maxconn * BYTES_PER_CONNECTION
            if quantity(res["requests"]["memory"]) < need_req:
                problem(f"{where} gateway memory request {res['requests']['memory']} < {need_req/2**20:.0f}Mi for {target:.0f} connections")
            if quantity(res["limits"]["memory"]) < need_lim:
                problem(f"{where} gateway memory limit {res['limits']['memory']} < {need_lim/2**20:.0f}Mi for TIDINGS_MAX_CONNECTIONS={maxconn}")
            if hpa["spec"]["scaleTargetRef"]["name"] != dep_name:
                problem(f"{where} HPA targets {hpa['spec']['scaleTargetRef']['name']}")

    # services and monitors
    svc = one("Service", "tidings-gateway")
    gw = one("Deployment", "tidings-gateway")
    wk = one("Deployment", "tidings-worker")
    if svc and gw and not labels_match(svc["spec"]["selector"], gw["spec"]["template"]["metadata"]["labels"]):
        problem(f"{where} Service tidings-gateway selects no gateway pod")
    for sm in by_kind.get("ServiceMonitor", []):
        targets = [s for s in by_kind.get("Service", []) if labels_match(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if not targets:
            problem(f"{where} ServiceMonitor {sm['metadata']['name']} selects no Service")
        for ep in sm["spec"]["endpoints"]:
            if not any(ep["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in targets):
                problem(f"{where} ServiceMonitor port {ep['port']} is no port of its Services")
    for pm in by_kind.get("PodMonitor", []):
        deps = [d for d in by_kind.get("Deployment", []) if labels_match(pm["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])]
        if not deps:
            problem(f"{where} PodMonitor {pm['metadata']['name']} selects no pod")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            if not any(ep["port"] in {p.get("name") for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])} for d in deps):
                problem(f"{where} PodMonitor port {ep['port']} is no container port")
    monitored = {m["spec"].get("jobLabel") for m in by_kind.get("ServiceMonitor", []) + by_kind.get("PodMonitor", [])}
    if monitored != {"app.kubernetes.io/name"}:
        problem(f"{where} monitors must take the job label from app.kubernetes.io/name (alerts select job=tidings-gateway|tidings-worker): {monitored}")

    # autoscaling of workers
    sos = by_kind.get("ScaledObject", [])
    if len(sos) != 1:
        problem(f"{where} expected one ScaledObject for the worker (KEDA allows one per workload), got {len(sos)}")
    for so in sos:
        s = so["spec"]
        if s["scaleTargetRef"]["name"] != "tidings-worker" or not wk:
            problem(f"{where} ScaledObject targets {s['scaleTargetRef']['name']}")
        if int(s.get("minReplicaCount", 0)) < 1:
            problem(f"{where} ScaledObject minReplicaCount must be >= 1 (scaling to zero would stop deferred and retried jobs)")
        consumers = set()
        for t in s["triggers"]:
            m = t["metadata"]
            if t["type"] != "nats-jetstream":
                problem(f"{where} trigger {t.get('name')} is {t['type']}")
            if "headless" not in m.get("natsServerMonitoringEndpoint", "") or not m["natsServerMonitoringEndpoint"].endswith(":8222"):
                problem(f"{where} trigger {t.get('name')}: monitoring endpoint must be NATS's headless service on 8222")
            for k in ("account", "stream", "consumer", "lagThreshold"):
                if not m.get(k):
                    problem(f"{where} trigger {t.get('name')}: {k} missing")
            want_stream = "TIDINGS_NOTIFY" if m.get("consumer") == "tidings-intake" else "TIDINGS_DELIVERIES"
            if m.get("stream") != want_stream:
                problem(f"{where} trigger {t.get('name')}: {m.get('consumer')} is on {want_stream}")
            consumers.add(m.get("consumer"))
        if consumers != expected_consumers():
            problem(f"{where} ScaledObject consumers {sorted(consumers)} != worker's {sorted(expected_consumers())}")

    # network policies: ingress from anywhere only for gateways
    for np in by_kind.get("NetworkPolicy", []):
        sel = np["spec"]["podSelector"].get("matchLabels", {})
        for rule in np["spec"].get("ingress", []):
            if not rule.get("from") and sel.get("app.kubernetes.io/name") != "tidings-gateway":
                problem(f"{where} NetworkPolicy {np['metadata']['name']} opens ingress from anywhere to non-gateway pods")
    if not any(np["spec"]["podSelector"].get("matchLabels") == {"app.kubernetes.io/part-of": "tidings"} and np["spec"].get("policyTypes") == ["Ingress"] and not np["spec"].get("ingress")
               for np in by_kind.get("NetworkPolicy", [])):
        problem(f"{where} no default-deny ingress policy for Tidings pods")

    # the PrometheusRule is the alerts file
    rules = by_kind.get("PrometheusRule", [])
    if len(rules) != 1 or rules[0]["spec"] != rules_spec:
        problem(f"{where} PrometheusRule spec differs from deploy/prometheus/alerts.yml (scripts/check-ops.py --write-prometheusrule)")
    return rules[0]["spec"] if rules else None


# --- NATS -----------------------------------------------------------------------------------

def check_nats():
    values = yaml.safe_load(open(os.path.join(ROOT, "k8s/nats/values.yaml")))
    cfg = values["config"]
    if cfg["cluster"]["replicas"] != 3 or not cfg["cluster"]["enabled"]:
        problem("k8s/nats/values.yaml: a 3-node cluster")
    fs = cfg["jetstream"]["fileStore"]
    if not (cfg["jetstream"]["enabled"] and fs["enabled"] and fs["pvc"]["enabled"]):
        problem("k8s/nats/values.yaml: JetStream file storage on PVCs")
    if not values["podTemplate"]["topologySpreadConstraints"]:
        problem("k8s/nats/values.yaml: topology spread")
    if values.get("promExporter", {}).get("enabled") is not True or not values["promExporter"].get("podMonitor", {}).get("enabled"):
        problem("k8s/nats/values.yaml: the exporter and its PodMonitor feed the consumer-lag alert")
    conf = open(os.path.join(ROOT, "k8s/nats/accounts.conf")).read()
    users = re.findall(r"user:\s*(\w+)\s*\n\s*password:[^\n]*\n\s*permissions\s*\{(.*?)\n        \}\n      \}", conf, re.S)
    if {u for u, _ in users} != {"tidings", "publisher"}:
        problem(f"accounts.conf: users {[u for u, _ in users]}")
    for user, perms in users:
        pub = re.search(r"publish\s*\{(.*?)\}", perms, re.S).group(1)
        allow = re.findall(r'"([^"]+)"', re.search(r"allow:\s*\[(.*?)\]", pub, re.S).group(1))
        deny = re.findall(r'"([^"]+)"', (re.search(r"deny:\s*\[(.*?)\]", pub, re.S) or re.match("()", "")).group(1))
        if "tidings.stored.>" not in deny:
            problem(f"accounts.conf: {user} must be denied tidings.stored.>")
        for a in allow:
            if a in (">", "tidings.>", "tidings.*.>") or a.startswith("tidings.stored"):
                problem(f"accounts.conf: {user} may publish {a}, which covers tidings.stored.>")
        if user == "publisher" and sorted(allow) != sorted(["tidings.events.>", "tidings.live.>", "tidings.notify"]):
            problem(f"accounts.conf: publishers may publish exactly tidings.events.>, tidings.live.>, tidings.notify; got {allow}")
    print("ok: NATS values and account permissions")


# --- docker-compose -------------------------------------------------------------------------

def check_compose(gateway_help, worker_help):
    deploy = os.path.join(ROOT, "deploy")
    c = yaml.safe_load(open(os.path.join(deploy, "docker-compose.yml")))
    services = c["services"]
    kinds = {"nats": [], "gateway": [], "worker": []}
    for name, s in services.items():
        for k in kinds:
            if name.startswith(k):
                kinds[k].append(name)
    if (len(kinds["nats"]), len(kinds["gateway"]), len(kinds["worker"])) != (3, 2, 2) or not {"prometheus", "grafana"} <= set(services):
        problem(f"compose: want 3 NATS, 2 gateways, 2 workers, Prometheus, Grafana: {sorted(services)}")
    host_ports = []
    container_ports = {}
    declared = set((c.get("volumes") or {}).keys())
    used = set()
    for name, s in services.items():
        for p in s.get("ports", []):
            host, cont = str(p).rsplit(":", 1)[0].split(":")[-1], str(p).rsplit(":", 1)[1]
            host_ports.append(host)
            container_ports.setdefault(name, set()).add(int(cont))
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith(".") or src.startswith("/"):
                if not os.path.exists(os.path.join(deploy, src)):
                    problem(f"compose: {name} mounts {src}, which does not exist")
            else:
                used.add(src)
                if src not in declared:
                    problem(f"compose: {name} uses volume {src}, not declared")
        for d in s.get("depends_on", []):
            if d not in services:
                problem(f"compose: {name} depends on unknown {d}")
        if "build" in s:
            df = os.path.normpath(os.path.join(deploy, s["build"]["context"], s["build"]["dockerfile"]))
            if not os.path.isfile(df):
                problem(f"compose: {name} builds {df}, missing")
        env = s.get("environment") or {}
        names = gateway_help if name in kinds["gateway"] else worker_help if name in kinds["worker"] else None
        for k, v in env.items():
            if k.startswith("TIDINGS_"):
                if names is None or k not in names:
                    problem(f"compose: {name} sets {k}, not a setting of its binary's --help")
        if name in kinds["gateway"]:
            port = int(env["TIDINGS_LISTEN"].rsplit(":", 1)[1])
            if port not in container_ports.get(name, set()):
                problem(f"compose: {name} listens on {port} but publishes {container_ports.get(name)}")
            if int(s.get("stop_grace_period", "10s").rstrip("s")) * 1000 <= int(env.get("TIDINGS_DRAIN_MS", 10000)) + int(env.get("TIDINGS_SHUTDOWN_GRACE_MS", 5000)):
                problem(f"compose: {name} stop_grace_period shorter than the drain")
        if name in kinds["gateway"] + kinds["worker"]:
            for url in env["TIDINGS_NATS_URL"].split(","):
                host, port = url.split("://")[1].split(":")
                if host not in kinds["nats"] or port != "4222":
                    problem(f"compose: {name} TIDINGS_NATS_URL names {url}")
        if name in kinds["nats"]:
            cmd = s["command"]
            routes = cmd[cmd.index("--routes") + 1].split(",")
            if {r.split("://")[1].split(":")[0] for r in routes} != set(kinds["nats"]) - {name}:
                problem(f"compose: {name} routes {routes}")
            if "--js" not in cmd:
                problem(f"compose: {name} without JetStream")
    if len(host_ports) != len(set(host_ports)):
        problem(f"compose: host ports used twice: {host_ports}")
    if declared - used:
        problem(f"compose: volumes declared but unused: {sorted(declared - used)}")
    # Prometheus scrapes what runs, on the ports the services listen on.
    prom = yaml.safe_load(open(os.path.join(deploy, "prometheus/prometheus.yml")))
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in prom["scrape_configs"]}
    if set(jobs) != {"tidings-gateway", "tidings-worker"}:
        problem(f"compose prometheus.yml: jobs {sorted(jobs)}")
    for job, targets in jobs.items():
        want = kinds["gateway"] if job == "tidings-gateway" else kinds["worker"]
        hosts = {t.split(":")[0] for t in targets}
        if hosts != set(want):
            problem(f"compose prometheus.yml: {job} scrapes {sorted(hosts)}, services are {want}")
        for t in targets:
            host, port = t.split(":")
            env = services.get(host, {}).get("environment", {})
            listen = env.get("TIDINGS_LISTEN") or env.get("TIDINGS_METRICS_LISTEN") or ""
            if not listen.endswith(":" + port) or not listen.startswith("0.0.0.0"):
                problem(f"compose prometheus.yml: {t} but {host} listens on {listen!r}")
    if "/etc/prometheus/alerts.yml" not in prom.get("rule_files", []):
        problem("compose prometheus.yml: the alerts are not loaded")
    print("ok: docker-compose structure (services, settings, ports, volumes, scrape targets)")


# --- Dockerfiles ------------------------------------------------------------------------------

def check_dockerfiles():
    """No Docker engine here: at least the build context has what the build needs."""
    cargo = open(os.path.join(ROOT, "Cargo.toml")).read()
    members = re.findall(r'"([^"]+)"', re.search(r"members\s*=\s*\[(.*?)\]", cargo, re.S).group(1))
    for svc in ("gateway", "worker"):
        df = open(os.path.join(ROOT, f"deploy/{svc}.Dockerfile")).read()
        ignore = open(os.path.join(ROOT, f"deploy/{svc}.Dockerfile.dockerignore")).read().split()
        copied = {src for c in re.findall(r"^COPY (?!--from)(.+)$", df, re.M) for src in c.split()[:-1]}
        for need in members + ["Cargo.lock", "deploy/probe"]:
            if need not in copied and not any(c.startswith(need) for c in copied):
                problem(f"deploy/{svc}.Dockerfile: the workspace needs {need}, not copied")
            if f"!{need}/**" not in ignore and f"!{need}" not in ignore:
                problem(f"deploy/{svc}.Dockerfile.dockerignore: {need} is excluded from the context")
        if f"-p tidings-{svc}" not in df or f'ENTRYPOINT ["/usr/local/bin/tidings-{svc}"]' not in df:
            problem(f"deploy/{svc}.Dockerfile: builds or runs something else than tidings-{svc}")
        if not re.search(r"^USER \d+:\d+$", df, re.M) or "HEALTHCHECK" not in df or "distroless" not in df:
            problem(f"deploy/{svc}.Dockerfile: numeric non-root USER, HEALTHCHECK, distroless runtime")
    print(f"ok: Dockerfiles copy every workspace member ({', '.join(members)}) and the probe")


# --- alerts, runbooks, dashboard ------------------------------------------------------------

def check_alerts_and_dashboard():
    alerts = yaml.safe_load(open(os.path.join(ROOT, "deploy/prometheus/alerts.yml")))
    tests = yaml.safe_load(open(os.path.join(ROOT, "deploy/prometheus/alerts.test.yml")))
    ops = open(os.path.join(ROOT, "docs/OPERATIONS.md")).read()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", ops, re.M)}
    tested = {t["alertname"] for test in tests["tests"] for t in test.get("alert_rule_test", []) if t.get("exp_alerts")}
    names = []
    for g in alerts["groups"]:
        for r in g["rules"]:
            a = r["alert"]
            names.append(a)
            anchor = r["annotations"]["runbook_url"].split("#", 1)[1]
            if anchor != a.lower() or anchor not in headings:
                problem(f"alert {a}: runbook anchor #{anchor} not a heading of docs/OPERATIONS.md")
            if a not in tested:
                problem(f"alert {a}: no promtool test expects it to fire")
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problem(f"alert {a}: severity")
    for m in ["tidings_gateway_write_timeouts_total", "tidings_gateway_refused_connections_total", "tidings_gateway_rate_limited_total"]:
        if m not in open(os.path.join(ROOT, "deploy/prometheus/alerts.yml")).read():
            problem(f"alerts: {m} (issue 13) has no alert")
    d = json.load(open(os.path.join(ROOT, "deploy/grafana/tidings.json")))
    ids = [p["id"] for p in d["panels"]]
    if len(ids) != len(set(ids)):
        problem("dashboard: duplicate panel ids")
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        if not p.get("targets") or any(not t.get("expr") or not t.get("refId") for t in p["targets"]):
            problem(f"dashboard: panel {p['title']!r} without queries")
    print(f"ok: {len(names)} alerts with runbooks and firing tests; dashboard {len(ids)} panels")


def write_prometheusrule():
    """k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml, comments dropped."""
    src = open(os.path.join(ROOT, "deploy/prometheus/alerts.yml")).read()
    body = [l for l in src.split("\n") if not l.startswith("#")]
    out = ["# Generated from deploy/prometheus/alerts.yml (the one source) by",
           "# `scripts/check-ops.py --write-prometheusrule`; scripts/test-ops fails when the two",
           "# differ. Runbooks: docs/OPERATIONS.md.",
           "apiVersion: monitoring.coreos.com/v1", "kind: PrometheusRule", "metadata:", "  name: tidings",
           "  labels:", "    release: prometheus", "spec:"]
    out += ["  " + l if l.strip() else l for l in body]
    with open(os.path.join(ROOT, "k8s/base/prometheusrule.yaml"), "w") as f:
        f.write("\n".join(out).rstrip() + "\n")


def main():
    if sys.argv[1:] == ["--write-prometheusrule"]:
        write_prometheusrule()
        return
    rendered, gw_help, wk_help, out_rules = sys.argv[1:5]
    gateway_help, worker_help = help_names(gw_help), help_names(wk_help)
    if not gateway_help or not worker_help:
        problem("no TIDINGS_* names in the --help outputs")
    adapter = yaml.safe_load(open(os.path.join(ROOT, "k8s/prometheus-adapter/values.yaml")))
    adapter_metric = adapter["rules"]["custom"][0]["name"]["as"]
    rules_spec = yaml.safe_load(open(os.path.join(ROOT, "deploy/prometheus/alerts.yml")))
    for overlay in ("dev", "prod"):
        docs = load_all(os.path.join(rendered, f"{overlay}.yaml"))
        spec = check_overlay(overlay, docs, gateway_help, worker_help, adapter_metric, rules_spec)
        if spec is not None:
            with open(os.path.join(out_rules, f"{overlay}-rules.yml"), "w") as f:
                yaml.safe_dump(spec, f, sort_keys=False)
        print(f"ok: k8s overlay {overlay}: {len(docs)} objects (settings, security, probes, drain, sizing, HPA, KEDA, monitors, policies, rules)")
    check_nats()
    check_dockerfiles()
    check_compose(gateway_help, worker_help)
    check_alerts_and_dashboard()
    if PROBLEMS:
        for p in PROBLEMS:
            print("FAIL:", p, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
