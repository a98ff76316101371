"""Answers are checked on the event loop only while that is cheap; anything slower moves to a worker."""

from __future__ import annotations

import dataclasses
import threading

from service.config import Limits
from service.pipeline.checks import Checks
from service.schemas.budget import TooSlow
from service.schemas.compiled import compile_schema

SLOW = {"type": "object", "properties": {"a": {"type": "string", "pattern": "\\w{0,99}" * 8 + "\\W"}}}


async def test_a_schema_wrongly_taken_for_cheap_still_leaves_the_loop() -> None:
    checks = Checks(Limits())
    mistaken = dataclasses.replace(compile_schema(SLOW), cheap=True)  # as if the classifier had let it through
    threads: list[str] = []
    original = mistaken.validator.iter_errors

    def spy(instance):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return original(instance)

    object.__setattr__(mistaken, "validator", type("V", (), {"iter_errors": staticmethod(spy)})())
    try:
        checked = await checks.answer('{"a": "' + "a" * 400 + '"}', mistaken)
        assert checked.value == {"a": "a" * 400}
    except TooSlow:
        pass  # past the full budget in the worker too: a 422 validation_timeout for the caller, not a stall
    assert threads[0] == threading.main_thread().name  # tried inline first
    assert any(name.startswith("schema-checks") for name in threads[1:])  # then in a worker thread
