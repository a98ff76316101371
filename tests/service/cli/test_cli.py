import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from service.cli import app

SEED = [
    "cost",
    "--input-tokens",
    "700",
    "--output-tokens",
    "150",
    "--price-in",
    "0.003",
    "--price-out",
    "0.006",
    "--ft-price",
    "0.0008",
    "--requests-per-day",
    "12000",
    "--payback-days",
    "30",
]


def test_cost_prints_the_design_example() -> None:
    result = CliRunner().invoke(app, SEED)
    assert result.exit_code == 0, result.output
    for figure in ("$0.00300", "$36.00", "$0.00068", "$8.16", "$27.84", "$835.20"):
        assert figure in result.output, figure


def test_cost_json_for_machines() -> None:
    result = CliRunner().invoke(app, [*SEED, "--json", "--training-cost", "417.6"])
    out = json.loads(result.output)
    assert out["prompted_cost_per_request_usd"] == 0.003
    assert out["finetuned_cost_per_day_usd"] == 8.16
    assert out["saving_per_day_usd"] == 27.84
    assert out["break_even_training_budget_usd"] == 835.2
    assert out["days_to_pay_back_training"] == 15.0


def test_cost_rejects_negative_numbers() -> None:
    result = CliRunner().invoke(app, [*SEED[:2], "-5", *SEED[3:]])
    assert result.exit_code == 2
    price_in = SEED.index("--price-in") + 1
    result = CliRunner().invoke(app, [*SEED[:price_in], "inf", *SEED[price_in + 1 :], "--json"])
    assert result.exit_code == 2 and "--price-in: a finite number" in result.output  # was `Infinity` in the JSON


def _with(option: str, value: str) -> list[str]:
    at = SEED.index(option) + 1
    return [*SEED[:at], value, *SEED[at + 1 :]]


def test_cost_names_nan_and_a_negative_price() -> None:
    result = CliRunner().invoke(app, _with("--price-in", "nan"))
    assert result.exit_code == 2 and "--price-in: a finite number of USD, not NaN" in result.output, result.output
    result = CliRunner().invoke(app, _with("--ft-price", "-1"))  # was "should be greater than or equal to 0"
    assert result.exit_code == 2 and "--ft-price: a number of USD >= 0, not -1" in result.output, result.output


def test_cost_json_that_would_overflow_is_refused_never_infinity() -> None:
    args = [*_with("--price-in", "1e308"), "--price-out", "1e308", "--requests-per-day", "1000000", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Infinity" not in result.stdout, result.output
    assert "prompted_cost_per_day_usd" in result.output and "overflow a JSON number" in result.output


def test_cost_when_fine_tuning_costs_more_has_no_negative_budget() -> None:
    result = CliRunner().invoke(app, [*_with("--ft-price", "0.01"), "--training-cost", "5"])
    assert result.exit_code == 0 and "$-" not in result.output, result.output  # was "$-1,980.00"
    assert "costs $66.00/day more than prompted, so fine-tuning never pays back" in result.output
    out = json.loads(CliRunner().invoke(app, [*_with("--ft-price", "0.01"), "--json"]).output)
    assert out["break_even_training_budget_usd"] is None and out["fine_tuning_pays_back"] is False
    assert out["saving_per_day_usd"] == -66.0


def test_check_config_of_yaml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text("a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 2 and "not valid YAML: nested too deeply" in result.output, result.output
    assert "Traceback" not in result.output and "RecursionError" not in result.output


def test_load_adapter_says_what_is_wrong_before_preparing_the_base_model(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backends.local.base_model as base_model

    prepared: list[str] = []
    monkeypatch.setattr(base_model, "prepare", lambda *a, **k: prepared.append("prepare"))
    from service.config import DEFAULT_CONFIG

    config = tmp_path / "c.yaml"  # type: ignore[operator]
    shipped = yaml.safe_load(DEFAULT_CONFIG.read_text())
    shipped["tasks_dir"] = str(DEFAULT_CONFIG.parent / "tasks")
    shipped["llamacpp"] = {**(shipped.get("llamacpp") or {}), "port": 9}  # nothing listens on the discard port
    config.write_text(yaml.safe_dump(shipped))
    for args in (["bad/name", "/nonexistent"], ["fine", "/nonexistent"]):
        result = CliRunner().invoke(app, ["llamacpp", "load-adapter", *args, "--config", str(config)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "use a plain name" in result.output or "is not running" in result.output
    assert prepared == []  # was: ~28 s of CPU on the base model first, then the refusal


def test_engine_install_builds_the_chosen_engine_and_prepares_the_model_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make demo` runs `engine install --no-model` beside pip (torch is not there yet); plain `engine install`
    also prepares the base model. Either way SIGTERM becomes an interrupt, so the compile stops with it."""
    import signal

    from service.cli import local

    calls: list[str] = []
    monkeypatch.setattr(local, "chosen_engine", lambda config: ("llamacpp", "as set"))
    monkeypatch.setattr(local, "llamacpp_install", lambda: calls.append("llamacpp"))
    monkeypatch.setattr(local, "vllm_install", lambda config: calls.append("vllm"))
    monkeypatch.setattr(local, "model_prepare", lambda *a, **k: calls.append("prepare"))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert CliRunner().invoke(app, ["engine", "install", "--no-model"]).exit_code == 0
        assert calls == ["llamacpp"]
        assert signal.getsignal(signal.SIGTERM) not in (previous, signal.SIG_DFL)  # the interrupt handler
        calls.clear()
        assert CliRunner().invoke(app, ["engine", "install"]).exit_code == 0
        assert calls == ["llamacpp", "prepare"]
    finally:
        signal.signal(signal.SIGTERM, previous)
