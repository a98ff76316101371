"""Deploy files checked without a cluster or a Docker engine: promtool, Kubernetes schemas, structure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DESIGN_METRICS = {
    "extraction_requests_total", "extraction_request_duration_seconds_bucket", "extraction_attempts_total",
    "extraction_tokens_total", "extraction_cost_usd_total", "extraction_inflight_requests",
    "extraction_schema_valid_total", "extraction_field_null_total", "extraction_backend_duration_seconds_bucket",
    # beyond DESIGN.md: resilience and safety
    "extraction_circuit_state", "extraction_fallbacks_total", "extraction_pii_findings_total",
}  # fmt: skip
promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (make test installs it)")


def panel_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/extraction-service.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


@promtool
def test_promtool_config_rules_and_rule_unit_tests() -> None:
    for args in (["check", "config", "prometheus/prometheus.yaml"], ["check", "rules", "prometheus/alerts.yaml"],
                 ["test", "rules", "prometheus/alerts_test.yaml"]):  # fmt: skip
        result = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_latency_errors_schema_cost_and_down() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {"ExtractionP95LatencyOverSLO", "ExtractionErrorRateHigh",
                                           "ExtractionSchemaFailureRateHigh", "ExtractionCostBurnOverBudget",
                                           "ExtractionBackendDown", "ExtractionCircuitOpen",
                                           "ExtractionFallbacksFrequent", "ExtractionPiiRejected"}  # fmt: skip


def test_dashboard_uses_design_metric_names_and_template_variables() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/extraction-service.json").read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["backend", "task"]
    used = set()
    for title, expr in panel_exprs():
        names = set(re.findall(r"\b(extraction_[a-z_]+|vllm:[a-z_]+)", expr))
        assert names, title
        used |= names
        if "rate(" in expr:
            assert "[$__rate_interval]" in expr, title
    ours = {n for n in used if n.startswith("extraction_")}
    assert ours <= DESIGN_METRICS, ours - DESIGN_METRICS
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
            "vllm:generation_tokens_total"} <= used  # fmt: skip
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus"


def test_grafana_datasource_interval_matches_the_scrape_interval() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["apiVersion"] == 1
    (source,) = datasource["datasources"]
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yaml").read_text())["global"]["scrape_interval"]
    assert source["uid"] == "prometheus" and source["jsonData"]["timeInterval"] == scrape
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yaml").read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    import kubernetes_validate

    kustomization = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    kinds = set()
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            kubernetes_validate.validate(doc, "1.30", strict=True)
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    vllm = yaml.safe_load((DEPLOY / "k8s/vllm-deployment.yaml").read_text())["spec"]["template"]["spec"]
    container = vllm["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(m["mountPath"] == "/adapters" for m in container["volumeMounts"])


def test_kubernetes_validation_catches_a_broken_manifest() -> None:
    import kubernetes_validate

    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
              "spec": {"replicas": "two", "selector": {}, "template": {}}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)


def test_compose_waits_for_health_and_requires_variables() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert {"vllm-gpu", "vllm-cpu", "api-gpu", "api-cpu", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for dependency in (service.get("depends_on") or {}).values():
            assert dependency == {"condition": "service_healthy"}, name
    for name in ("vllm-gpu", "vllm-cpu", "api-gpu", "api-cpu", "prometheus"):
        assert "healthcheck" in services[name], name
    assert services["vllm-gpu"]["image"].startswith("vllm/vllm-openai")
    for variable in ("MODEL_DIR", "ADAPTERS_DIR", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(r"\$\{" + variable + r":\?", text), variable
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    assert "USER app" in dockerfile and "HEALTHCHECK" in dockerfile
