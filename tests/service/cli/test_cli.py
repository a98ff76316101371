import json

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
