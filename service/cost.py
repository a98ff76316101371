"""Cost arithmetic in exact decimals: per request, per day, and the break-even training budget."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from backends.config import Pricing

_THOUSAND = Decimal(1000)


def _d(x: float | int | Decimal) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def request_cost(input_tokens: int, output_tokens: int, pricing: Pricing) -> Decimal:
    """USD for one call: input/1000 x price_in + output/1000 x price_out."""
    return _d(input_tokens) / _THOUSAND * _d(pricing.input_per_1k) + _d(output_tokens) / _THOUSAND * _d(
        pricing.output_per_1k
    )


@dataclass(frozen=True)
class Comparison:
    """Prompted vs fine-tuned cost at a given traffic; the saving over `payback_days` is the break-even."""

    prompted_per_request: Decimal
    finetuned_per_request: Decimal
    requests_per_day: int
    payback_days: int

    @property
    def prompted_per_day(self) -> Decimal:
        return self.prompted_per_request * self.requests_per_day

    @property
    def finetuned_per_day(self) -> Decimal:
        return self.finetuned_per_request * self.requests_per_day

    @property
    def saving_per_day(self) -> Decimal:
        return self.prompted_per_day - self.finetuned_per_day

    @property
    def break_even_budget(self) -> Decimal:
        """The most a fine-tune may cost to pay for itself within `payback_days` (negative when the fine-tuned
        model costs more: no budget at all, see `pays_back`)."""
        return self.saving_per_day * self.payback_days

    @property
    def pays_back(self) -> bool:
        """Whether fine-tuning saves anything per day, so that some training budget pays for itself."""
        return self.saving_per_day > 0

    def payback_days_for(self, training_cost: float | Decimal) -> Decimal | None:
        """Days of traffic until `training_cost` is recovered; None if fine-tuning never pays back."""
        if self.saving_per_day <= 0:
            return None
        return _d(training_cost) / self.saving_per_day

    def as_dict(self) -> dict[str, float | int | bool | None]:
        """The figures as JSON numbers; the break-even budget is null where fine-tuning never pays back."""
        return {
            "prompted_cost_per_request_usd": float(self.prompted_per_request),
            "prompted_cost_per_day_usd": float(self.prompted_per_day),
            "finetuned_cost_per_request_usd": float(self.finetuned_per_request),
            "finetuned_cost_per_day_usd": float(self.finetuned_per_day),
            "saving_per_day_usd": float(self.saving_per_day),
            "requests_per_day": self.requests_per_day,
            "payback_days": self.payback_days,
            "fine_tuning_pays_back": self.pays_back,
            "break_even_training_budget_usd": float(self.break_even_budget) if self.pays_back else None,
        }


def compare(
    input_tokens: int,
    output_tokens: int,
    prompted: Pricing,
    finetuned: Pricing,
    requests_per_day: int,
    payback_days: int,
    finetuned_input_tokens: int | None = None,
    finetuned_output_tokens: int | None = None,
) -> Comparison:
    """Both backends' cost for the same traffic; the fine-tuned one may use fewer (shorter-prompt) tokens."""
    ft_in = input_tokens if finetuned_input_tokens is None else finetuned_input_tokens
    ft_out = output_tokens if finetuned_output_tokens is None else finetuned_output_tokens
    return Comparison(
        prompted_per_request=request_cost(input_tokens, output_tokens, prompted),
        finetuned_per_request=request_cost(ft_in, ft_out, finetuned),
        requests_per_day=requests_per_day,
        payback_days=payback_days,
    )
