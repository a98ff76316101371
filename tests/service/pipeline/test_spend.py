from decimal import Decimal

from backends.base import Usage
from service.errors import UpstreamError
from service.pipeline.spend import Spend


def test_spend_adds_up_and_keeps_one_shape() -> None:
    a = Spend(answers=1, calls=3, usage=Usage(700, 150), cost=Decimal("0.003"), asks=1)
    b = Spend(answers=2, calls=2, usage=Usage(100, 50), cost=Decimal("0.001"), asks=2)
    total = a + b
    assert total == Spend(3, 5, Usage(800, 200), Decimal("0.004"), asks=3)
    assert (total.retries, total.tokens, total.cost_usd) == (2, 1000, 0.004)
    assert total.details() == {"attempts": 3, "retries": 2, "usage": {"input_tokens": 800, "output_tokens": 200},
                               "cost_usd": 0.004}  # fmt: skip
    assert set(Spend().log_fields()) == set(total.log_fields())  # the log line's keys never depend on the outcome
    assert Spend() + a == a


def test_errors_carry_spend_in_details_and_add_earlier_spend() -> None:
    e = UpstreamError("boom", details={"backend": "b"}, spend=Spend(1, 2, Usage(10, 5), Decimal("0.5")))
    assert e.details["attempts"] == 1 and e.details["backend"] == "b"
    e.add_spend(Spend(2, 2, Usage(1, 1), Decimal("0.25")))
    assert e.spend == Spend(3, 4, Usage(11, 6), Decimal("0.75"))
    assert e.details["cost_usd"] == 0.75 and e.details["usage"] == {"input_tokens": 11, "output_tokens": 6}
    plain = UpstreamError("no calls")
    assert plain.spend is None and plain.details == {}


def test_retries_are_the_calls_beyond_each_attempts_first() -> None:
    refused = Spend(answers=0, calls=1, asks=1)  # one call, refused: no answer and no retry
    assert refused.retries == 0
    persistent = Spend(answers=0, calls=4, asks=1)  # the first call and 3 retries, all failed
    assert persistent.retries == 3
    bill = Spend(answers=1, usage=Usage(10, 5))  # one answer's bill: counts no calls
    assert (persistent + bill).retries == 3 and (refused + persistent).retries == 3
