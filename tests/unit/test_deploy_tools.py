"""The deploy artifacts pass the tools their users run on them, offline.

- the Helm chart renders (``helm template``) with its default values and with
  ``ci/full-values.yaml``, and every manifest, the chart's and the plain ones of
  ``deploy/locust``, is valid against the Kubernetes API schemas bundled by
  ``kubernetes-validate``, for the oldest Kubernetes the chart supports and the newest
  one bundled;
- ``promtool check rules`` accepts ``prometheus/rules.yml`` and ``promtool test rules``
  passes ``prometheus/rules.test.yml``, in which every alert fires;
- ``docker-compose.yml`` is valid against the Compose specification's JSON schema
  (vendored in ``check-jsonschema``);
- ``tofu fmt -check`` finds nothing to reformat in ``tofu/`` (``tofu validate`` needs
  providers from a registry, which is not offline).

helm, promtool and tofu are built from source into ``.stack/bin`` by ``make tools`` (part
of ``make prepare``). A missing tool fails these tests rather than skipping them: a check
that silently does not run proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from core import settings as core_settings
from gateway.config import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "vote-platform"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TESTS = DEPLOY / "prometheus" / "rules.test.yml"
TOOLS = ROOT / ".stack" / "bin"

# The chart's kubeVersion floor (Chart.yaml) and the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# Kinds from CRDs, which no bundled schema covers: (apiVersion, kind).
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Secrets the chart refers to when they are created out of band.
EXISTING_SECRETS = [
    "--set",
    "secrets.existingEnvSecret=vote-env",
    "--set",
    "secrets.existingKeysSecret=vote-keys",
]


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: `make tools` builds it (`make prepare` runs it)")
    return str(path)


def run(args: list[str], *, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def ok(args: list[str], *, cwd: Path = ROOT) -> str:
    done = run(args, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# ---------------------------------------------------------------------------------------
# Helm and the Kubernetes schemas


def helm_template(kube_version: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        [tool("helm"), "template", "vote", str(CHART), "--kube-version", kube_version, *args]
    )


def render(kube_version: str, *args: str) -> list[dict]:
    done = helm_template(kube_version, *args)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def validate(manifests: list[dict], kube_version: str) -> None:
    for manifest in manifests:
        where = f"{manifest['kind']} {manifest['metadata']['name']}"
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is not valid Kubernetes {kube_version}: {exc.message}")


def kinds(manifests: list[dict]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def test_helm_lint_passes_with_both_value_sets():
    ok([tool("helm"), "lint", "--strict", str(CHART), *EXISTING_SECRETS])
    ok([tool("helm"), "lint", "--strict", str(CHART), "-f", str(FULL_VALUES)])


def test_default_values_alone_ask_for_the_secrets():
    done = helm_template(KUBE_VERSIONS[-1])
    assert done.returncode != 0
    assert "secrets.pgDsn (or secrets.existingEnvSecret) is required" in done.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_with_default_values_renders_valid_manifests(kube_version: str):
    manifests = render(kube_version, *EXISTING_SECRETS)
    assert kinds(manifests) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "Service",
        "StatefulSet",
    ]
    validate(manifests, kube_version)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_with_every_option_renders_valid_manifests(kube_version: str):
    manifests = render(kube_version, "-f", str(FULL_VALUES))
    # No HPA (autoscaling is off); the chart's own Secrets (env, keys, the migrate hook's,
    # the Kafka password); ServiceMonitors.
    assert kinds(manifests) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Job",
        "PodDisruptionBudget",
        "Secret",
        "Secret",
        "Secret",
        "Secret",
        "Service",
        "Service",
        "Service",
        "ServiceMonitor",
        "ServiceMonitor",
        "StatefulSet",
    ]
    validate(manifests, kube_version)
    gateway = next(m for m in manifests if m["kind"] == "StatefulSet")
    assert gateway["spec"]["replicas"] == 5
    claim = gateway["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "local-nvme"


def test_kafka_sasl_and_tls_reach_both_components():
    manifests = render(KUBE_VERSIONS[-1], "-f", str(FULL_VALUES))
    by_name = {(m["kind"], m["metadata"]["name"]): m for m in manifests}
    password = by_name[("Secret", "vote-kafka-sasl")]["stringData"]["password"]
    assert password == "not-a-secret"
    for component, workload in (("gateway", "StatefulSet"), ("processor", "Deployment")):
        env = by_name[("ConfigMap", f"vote-{component}")]["data"]
        assert {k: v for k, v in env.items() if k.startswith("VOTE_KAFKA_S")} == {
            "VOTE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "VOTE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "VOTE_KAFKA_SASL_USERNAME": "vote-platform",
            "VOTE_KAFKA_SASL_PASSWORD_FILE": "/etc/vote/kafka-sasl/password",
            "VOTE_KAFKA_SSL_CA_LOCATION": "/etc/vote/kafka-tls/ca.crt",
            "VOTE_KAFKA_SSL_CERTIFICATE_LOCATION": "/etc/vote/kafka-tls/tls.crt",
            "VOTE_KAFKA_SSL_KEY_LOCATION": "/etc/vote/kafka-tls/tls.key",
            "VOTE_KAFKA_SSL_VERIFY_HOSTNAME": "true",
        }
        assert "not-a-secret" not in json.dumps(env)
        pod = by_name[(workload, f"vote-{component}")]["spec"]["template"]["spec"]
        volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        assert volumes["kafka-sasl"]["secretName"] == "vote-kafka-sasl"
        assert volumes["kafka-sasl"]["items"] == [{"key": "password", "path": "password"}]
        assert volumes["kafka-tls"]["secretName"] == "kafka-client-tls"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["kafka-sasl"] == "/etc/vote/kafka-sasl"
        assert mounts["kafka-tls"] == "/etc/vote/kafka-tls"


def test_kafka_defaults_to_plaintext_without_credentials():
    manifests = render(KUBE_VERSIONS[-1], *EXISTING_SECRETS)
    for m in manifests:
        if m["kind"] == "ConfigMap":
            keys = {k for k in m["data"] if k.startswith("VOTE_KAFKA_S")}
            assert keys == {"VOTE_KAFKA_SECURITY_PROTOCOL"}
            assert m["data"]["VOTE_KAFKA_SECURITY_PROTOCOL"] == "plaintext"
    assert "kafka-sasl" not in json.dumps(manifests)


def _gateway_env(manifests: list[dict]) -> dict[str, str]:
    return next(
        m["data"]
        for m in manifests
        if m["kind"] == "ConfigMap"
        and m["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    )


def test_trusted_proxies_reach_the_gateway_as_settings_it_accepts():
    manifests = render(KUBE_VERSIONS[-1], "-f", str(FULL_VALUES))
    env = _gateway_env(manifests)
    assert env["VOTE_TRUSTED_PROXIES"] == "10.0.0.0/8,fd00::/8"
    proxies = {"VOTE_TRUSTED_PROXIES": env["VOTE_TRUSTED_PROXIES"]}
    assert core_settings.load(GatewaySettings, proxies).trusted_proxies == "10.0.0.0/8,fd00::/8"
    with pytest.raises(core_settings.ConfigError, match=r"10\.0\.0\.0/33"):
        core_settings.load(GatewaySettings, {"VOTE_TRUSTED_PROXIES": "10.0.0.0/33"})
    # By default no proxy is believed: the peer address is the client.
    default = render(KUBE_VERSIONS[-1], *EXISTING_SECRETS)
    env = _gateway_env(default)
    assert env["VOTE_TRUSTED_PROXIES"] == ""


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["kafka.securityProtocol=tls"], "kafka.securityProtocol must be plaintext, ssl"),
        (["kafka.securityProtocol=sasl_ssl"], "needs kafka.sasl.username"),
        (
            ["kafka.securityProtocol=ssl", "kafka.tls.clientCertificate=true"],
            "kafka.tls.clientCertificate needs kafka.tls.existingSecret",
        ),
    ],
)
def test_chart_refuses_an_incomplete_kafka_security_setup(settings: list[str], message: str):
    flags = [arg for setting in settings for arg in ("--set", setting)]
    done = helm_template(KUBE_VERSIONS[-1], *EXISTING_SECRETS, *flags)
    assert done.returncode != 0
    assert message in done.stderr


def test_validation_catches_a_broken_manifest():
    manifests = render(KUBE_VERSIONS[-1], *EXISTING_SECRETS)
    gateway = next(m for m in manifests if m["kind"] == "StatefulSet")
    gateway["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBE_VERSIONS[-1], strict=True)
    gateway["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 8080
    gateway["spec"]["replicaz"] = 3  # strict: unknown fields are refused
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_plain_manifests_are_valid(kube_version: str):
    manifests = [
        doc
        for path in sorted((DEPLOY / "locust").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert {m["kind"] for m in manifests} >= {"Job", "Service"}
    validate(manifests, kube_version)


def test_chart_refuses_more_processor_members_than_partitions():
    # 13 pods x 2 members against 24 partitions: two consumers would sit idle.
    flags = ["--set", "processor.replicas=13", "--set", "kafka.partitions=24"]
    done = helm_template(KUBE_VERSIONS[-1], *EXISTING_SECRETS, *flags)
    assert done.returncode != 0
    assert "(13 x 2) must not exceed kafka.partitions (24)" in done.stderr
    assert helm_template(KUBE_VERSIONS[-1], *EXISTING_SECRETS, *flags[:2]).returncode == 0


# ---------------------------------------------------------------------------------------
# Prometheus rules


def alerts_of_rules() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"] for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_accepts_the_rules():
    assert "SUCCESS" in ok([tool("promtool"), "check", "rules", str(RULES)])


def test_promtool_rule_tests_pass():
    ok([tool("promtool"), "test", "rules", str(RULES_TESTS)], cwd=RULES_TESTS.parent)


def test_every_alert_is_shown_firing_by_a_rule_test():
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert firing == alerts_of_rules()


def test_rule_tests_fail_when_a_threshold_moves(tmp_path: Path):
    # The rule tests pin the thresholds: raise the ack p99 budget tenfold and they fail.
    text = RULES.read_text()
    assert text.count("vote:ack_seconds:p99_5m > 0.1") == 1
    (tmp_path / RULES.name).write_text(
        text.replace("vote:ack_seconds:p99_5m > 0.1", "vote:ack_seconds:p99_5m > 1")
    )
    shutil.copy(RULES_TESTS, tmp_path / RULES_TESTS.name)
    done = run([tool("promtool"), "test", "rules", RULES_TESTS.name], cwd=tmp_path)
    assert done.returncode != 0
    assert "VoteAckLatencyP99High" in done.stdout + done.stderr


# ---------------------------------------------------------------------------------------
# docker-compose


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    schema = ["--builtin-schema", "vendor.compose-spec"]
    return run([sys.executable, "-m", "check_jsonschema", *schema, str(path)])


def test_compose_file_follows_the_compose_specification():
    done = check_compose(DEPLOY / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_check_catches_a_misspelt_key(tmp_path: Path):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    compose["services"]["gateway"]["enviroment"] = compose["services"]["gateway"].pop("environment")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    done = check_compose(broken)
    assert done.returncode != 0
    assert "enviroment" in done.stdout + done.stderr


# ---------------------------------------------------------------------------------------
# OpenTofu


def tofu(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # An empty CLI configuration: nothing of the machine's, and no warning about it.
    config = tmp_path / "tofurc"
    config.touch()
    return subprocess.run(
        [tool("tofu"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CLI_CONFIG_FILE": str(config)},
    )


def test_tofu_files_are_formatted(tmp_path: Path):
    done = tofu(tmp_path, "fmt", "-check", "-diff", "-recursive", str(DEPLOY / "tofu"))
    assert done.returncode == 0, f"tofu fmt -check:\n{done.stdout}\n{done.stderr}"


def test_tofu_fmt_check_catches_misformatting(tmp_path: Path):
    text = (DEPLOY / "tofu" / "variables.tf").read_text()
    assert "  type        = string\n" in text
    broken = tmp_path / "module"
    broken.mkdir()
    (broken / "variables.tf").write_text(
        text.replace("  type        = string\n", "  type = string\n", 1)
    )
    done = tofu(tmp_path, "fmt", "-check", str(broken))
    assert done.returncode != 0
    assert "variables.tf" in done.stdout
