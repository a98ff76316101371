"""Prompt injection against the real local model: text is data; it never changes structure or routing."""

from __future__ import annotations

import asyncio

import pytest

from loadtest.injection import CORPUS, run
from tests.vllm.conftest import Stack

pytestmark = pytest.mark.vllm


def test_injected_instructions_never_break_structure_or_routing(stack: Stack) -> None:
    result = asyncio.run(run(stack.service_url, "local-prompted"))
    assert result["cases"] == len(CORPUS)
    assert result["schema_valid_rate"] == 1.0, [r for r in result["rows"] if r["status"] != 200]
    assert result["routing_changed"] == 0
    assert result["prompt_leaks"] == 0
    # The leak rate is measured, not asserted: a model may copy an injected value into a field, and that
    # value is still schema-valid. `python -m loadtest.injection` reports it.
