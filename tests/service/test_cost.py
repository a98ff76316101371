from decimal import Decimal

from backends.config import Pricing
from service.cost import compare, request_cost


def test_design_seed_example_reproduces_exactly() -> None:
    result = compare(
        700,
        150,
        prompted=Pricing(input_per_1k=0.003, output_per_1k=0.006),
        finetuned=Pricing(input_per_1k=0.0008, output_per_1k=0.0008),
        requests_per_day=12_000,
        payback_days=30,
    )
    assert result.prompted_per_request == Decimal("0.0030")
    assert result.prompted_per_day == Decimal("36")
    assert result.finetuned_per_request == Decimal("0.00068")
    assert result.finetuned_per_day == Decimal("8.16")
    assert result.saving_per_day == Decimal("27.84")
    assert result.break_even_budget == Decimal("835.20")
    assert result.payback_days_for(417.60) == Decimal("15")


def test_request_cost_sums_input_and_output_prices() -> None:
    assert request_cost(1000, 0, Pricing(input_per_1k=0.5, output_per_1k=9)) == Decimal("0.5")
    assert request_cost(0, 2000, Pricing(input_per_1k=0.5, output_per_1k=0.25)) == Decimal("0.5")
    assert request_cost(123, 45, Pricing()) == 0


def test_fine_tuning_that_costs_more_never_pays_back() -> None:
    result = compare(100, 10, Pricing(input_per_1k=0.0001), Pricing(input_per_1k=1, output_per_1k=1), 1000, 30)
    assert result.saving_per_day < 0
    assert result.payback_days_for(10) is None


def test_shorter_finetuned_prompt_is_priced_with_its_own_token_count() -> None:
    result = compare(
        700,
        150,
        Pricing(input_per_1k=0.001, output_per_1k=0.001),
        Pricing(input_per_1k=0.001, output_per_1k=0.001),
        1,
        1,
        finetuned_input_tokens=100,
    )
    assert result.prompted_per_request == Decimal("0.85") / 1000 * 1
    assert result.finetuned_per_request == Decimal("0.25") / 1000
