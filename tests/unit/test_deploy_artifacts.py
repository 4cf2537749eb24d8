"""The operator artifacts under deploy/ agree with the code.

Metric names in the Prometheus rules and the Grafana dashboards must be metrics that
gateway/metrics.py or processor/metrics.py define; every VOTE_* variable in
docker-compose, the Helm chart and the OpenTofu module must be a settings field of the
service it configures; every JSON and plain YAML file must parse.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import msgspec
import pytest

from core.settings import variables
from gateway.config import GatewaySettings
from processor.settings import ProcessorSettings

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML comes with uvicorn[standard] (bench extra)
    yaml = None

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "vote-platform"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
COMPOSE = DEPLOY / "docker-compose.yml"

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")

# Labels Prometheus or the scrape adds; `le` of histogram buckets.
SCRAPE_LABELS = {"job", "instance", "le", "namespace", "pod", "service", "container"}
METRIC_RE = re.compile(r"\bvote_[a-z0-9_]+\b")
SELECTOR_RE = re.compile(r"\b(vote_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
BY_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
VOTE_VAR_RE = re.compile(r"\bVOTE_[A-Z0-9_]+\b")


def _defined_metrics() -> dict[str, set[str]]:
    """Series names the code exposes -> their label names (read from the source)."""
    series: dict[str, set[str]] = {}
    for module in ("gateway/metrics.py", "processor/metrics.py"):
        for node in ast.walk(ast.parse((ROOT / module).read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("Counter", "Gauge", "Histogram")
                and node.args
            ):
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            labels_node = (
                node.args[2]
                if len(node.args) > 2
                else next((k.value for k in node.keywords if k.arg == "labelnames"), None)
            )
            labels = set(ast.literal_eval(labels_node)) if labels_node is not None else set()
            name = first.value
            if node.func.id == "Counter":
                base = name.removesuffix("_total")
                names = {base + "_total", base + "_created"}
            elif node.func.id == "Histogram":
                names = {name + s for s in ("_bucket", "_sum", "_count", "_created")}
            else:
                names = {name}
            for n in names:
                series[n] = labels | ({"le"} if n.endswith("_bucket") else set())
    return series


DEFINED = _defined_metrics()


def _exprs_of_rules() -> list[str]:
    text = RULES.read_text()
    if yaml is None:
        return re.findall(r"expr:\s*(.+)", text)
    return [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def _exprs_of_dashboard(path: Path) -> list[str]:
    out: list[str] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            out.extend(t["expr"] for t in panel.get("targets", []) if "expr" in t)
            walk(panel.get("panels", []))

    walk(json.loads(path.read_text())["panels"])
    return out


def _check_exprs(exprs: list[str], where: str) -> None:
    assert exprs, f"no PromQL expressions found in {where}"
    all_labels = set().union(*DEFINED.values()) | SCRAPE_LABELS
    for expr in exprs:
        for name in METRIC_RE.findall(expr):
            assert name in DEFINED, f"{where}: {name!r} is not a metric the code defines"
        for name, matchers in SELECTOR_RE.findall(expr):
            for label in MATCHER_RE.findall(matchers):
                assert label in DEFINED[name] | SCRAPE_LABELS, (
                    f"{where}: {name} has no label {label!r} (has {sorted(DEFINED[name])})"
                )
        for group in BY_RE.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                assert label in all_labels, f"{where}: no metric has label {label!r}: {expr}"


def test_the_code_defines_the_design_metrics():
    # docs/ARCHITECTURE.md, Metrics: if these move, the rules and dashboards must move with them.
    for name in (
        "vote_requests_total",
        "vote_ack_seconds_bucket",
        "vote_spill_events",
        "vote_kafka_delivery_errors_total",
        "vote_consumer_lag",
        "vote_db_commits_total",
        "vote_ack_to_count_seconds_bucket",
    ):
        assert name in DEFINED
    assert DEFINED["vote_requests_total"] == {"code"}
    assert DEFINED["vote_ack_seconds_bucket"] == {"durability", "le"}


def test_every_json_file_parses():
    files = [p for p in DEPLOY.rglob("*.json") if "local" not in p.relative_to(DEPLOY).parts]
    assert len(files) >= 2
    for path in files:
        json.loads(path.read_text())


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_a_grafana_dashboard(path: Path):
    d = json.loads(path.read_text())
    assert d["schemaVersion"] == 39 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in d["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_dashboards_use_only_defined_metrics():
    assert {p.name for p in DASHBOARDS} == {"vote-gateway.json", "vote-processor.json"}
    for path in DASHBOARDS:
        _check_exprs(_exprs_of_dashboard(path), path.name)


def test_region_health_is_on_the_processor_dashboard():
    """What the region alerts watch, an operator can also see: the mirror's lag, the
    other regions' heartbeats, takeovers, PostgreSQL's replication lag and timeline."""
    shown = set(
        METRIC_RE.findall(
            " ".join(_exprs_of_dashboard(DEPLOY / "grafana" / "dashboards" / "vote-processor.json"))
        )
    )
    region_metrics = {
        "vote_mirror_heartbeat_age_seconds",
        "vote_region_heartbeat_age_seconds",
        "vote_region_takeover",
        "vote_region_takeovers_total",
        "vote_pg_replication_lag_bytes",
        "vote_pg_timeline",
    }
    assert region_metrics <= shown, region_metrics - shown


def test_rules_use_only_defined_metrics():
    _check_exprs(_exprs_of_rules(), "rules.yml")


@needs_yaml
def test_rules_cover_the_operator_alerts():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    for rule in rules:
        assert ("record" in rule) != ("alert" in rule), rule
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
        # a recording-rule name used in an expression must be recorded here
        for used in re.findall(r"\bvote:[a-z0-9_:]+", rule["expr"]):
            assert used in recorded, f"{used} is not recorded"
    expected = {
        "VoteGateway5xxRatioHigh": "vote_requests_total",
        "VoteAckLatencyP99High": "vote:ack_seconds:p99_5m",
        "VoteSpillNotEmpty": "vote_spill_events",
        "VoteKafkaDeliveryErrors": "vote_kafka_delivery_errors_total",
        "VoteConsumerLagGrowing": "vote:consumer_lag:sum",
        "VoteProcessorCommitFailures": 'vote_db_commits_total{result!="ok"}',
        "VoteAckToCountP99High": "vote:ack_to_count_seconds:p99_5m",
        "VoteProcessorDown": 'up{job="vote-processor"} == 0',
    }
    by_record = {r["record"]: r["expr"] for r in rules if "record" in r}
    for alert, needle in expected.items():
        expr = alerts[alert]["expr"]
        expanded = expr + " ".join(v for k, v in by_record.items() if k in expr)
        assert needle in expanded, f"{alert}: {expr!r} does not use {needle!r}"
    assert "0.1" in alerts["VoteAckLatencyP99High"]["expr"]
    assert alerts["VoteSpillNotEmpty"]["for"] == "5m"
    assert "> 5" in alerts["VoteAckToCountP99High"]["expr"]


@needs_yaml
def test_prometheus_scrapes_the_ports_the_services_serve():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        j["job_name"]: t
        for j in config["scrape_configs"]
        for sc in j["static_configs"]
        for t in sc["targets"]
    }
    gw = msgspec.structs.fields(GatewaySettings)
    pr = msgspec.structs.fields(ProcessorSettings)
    assert targets["vote-gateway"].endswith(f":{_default(gw, 'metrics_port')}")
    assert targets["vote-processor"].endswith(f":{_default(pr, 'processor_metrics_port')}")


def _default(fields: tuple[msgspec.structs.FieldInfo, ...], name: str) -> object:
    return next(f.default for f in fields if f.name == name)


GATEWAY_VARS = set(variables(GatewaySettings))
PROCESSOR_VARS = set(variables(ProcessorSettings))


def _assert_known(names: set[str], allowed: set[str], where: str) -> None:
    unknown = sorted(names - allowed)
    assert not unknown, f"{where}: {unknown} are not settings fields"


def test_every_vote_variable_in_deploy_is_a_settings_field():
    files = [COMPOSE, *CHART.rglob("*"), *(DEPLOY / "tofu").rglob("*.tf")]
    seen = 0
    for path in files:
        if path.is_file():
            names = set(VOTE_VAR_RE.findall(path.read_text()))
            seen += len(names)
            _assert_known(names, GATEWAY_VARS | PROCESSOR_VARS, str(path.relative_to(ROOT)))
    assert seen > 10


def test_helm_templates_configure_each_component_with_its_own_settings():
    templates = CHART / "templates"
    for path in templates.glob("*.yaml"):
        text = path.read_text()
        if path.name.startswith("gateway-"):
            _assert_known(set(VOTE_VAR_RE.findall(text)), GATEWAY_VARS, path.name)
        elif path.name.startswith(("processor-", "migrate-")):
            _assert_known(set(VOTE_VAR_RE.findall(text)), PROCESSOR_VARS, path.name)
    # configmap.yaml holds one ConfigMap per component, split on the document marker.
    gateway_cm, processor_cm = (templates / "configmap.yaml").read_text().split("\n---\n")
    assert "-gateway" in gateway_cm and "-processor" in processor_cm
    _assert_known(set(VOTE_VAR_RE.findall(gateway_cm)), GATEWAY_VARS, "gateway ConfigMap")
    _assert_known(set(VOTE_VAR_RE.findall(processor_cm)), PROCESSOR_VARS, "processor ConfigMap")


@needs_yaml
def test_helm_values_configure_each_component_with_its_own_settings():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    _assert_known(set(values["gateway"]["env"]), GATEWAY_VARS, "values gateway.env")
    _assert_known(set(values["processor"]["env"]), PROCESSOR_VARS, "values processor.env")
    assert values["processor"]["replicas"] <= values["kafka"]["partitions"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "vote-platform"


@needs_yaml
def test_compose_services_read_their_own_settings():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    roles = {
        "gateway": GATEWAY_VARS,
        "gateway-init": GATEWAY_VARS,
        "processor": PROCESSOR_VARS,
        "migrate": PROCESSOR_VARS,
    }
    for name, allowed in roles.items():
        env = services[name]["environment"]
        _assert_known({k for k in env if k.startswith("VOTE_")}, allowed, f"compose {name}")
    assert services["gateway"]["command"] == ["python", "-m", "gateway"]
    assert services["gateway"]["environment"]["VOTE_WORKERS"] == 2
    assert services["processor"]["command"] == ["python", "-m", "processor"]
    assert services["migrate"]["command"] == ["python", "-m", "processor", "migrate"]
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    for svc in services.values():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services
            assert cond["condition"] in (
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            )
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
    # Published ports are the ones the services listen on.
    gw_env = services["gateway"]["environment"]
    assert {"8080:8080", "9100:9100"} <= set(services["gateway"]["ports"])
    assert (gw_env["VOTE_HTTP_PORT"], gw_env["VOTE_METRICS_PORT"]) == (8080, 9100)
    assert services["processor"]["environment"]["VOTE_PROCESSOR_METRICS_PORT"] == 9101
    # Mounted config files exist.
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source


@needs_yaml
def test_plain_yaml_files_parse():
    files = [
        p
        for p in DEPLOY.rglob("*.y*ml")
        if "local" not in p.relative_to(DEPLOY).parts and "templates" not in p.parts
    ]
    assert len(files) >= 6
    for path in files:
        # Kubernetes manifests (deploy/locust) hold several documents in one file.
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents and all(doc is not None for doc in documents), path


def test_helm_templates_are_balanced():
    # helm is not installed here: at least check that actions open and close in pairs.
    opening = re.compile(r"\{\{-?\s*(if|range|with|define)\b")
    for path in (CHART / "templates").iterdir():
        text = path.read_text()
        assert text.count("{{") == text.count("}}"), path.name
        opens = len(opening.findall(text))
        ends = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", text))
        assert opens == ends, f"{path.name}: {opens} blocks opened, {ends} closed"
