"""The grammar guard: a schema new to a vLLM backend is probed with one token under a time budget; a slow or
refused grammar degrades to JSON mode + validation for that backend, counted; static limits catch the shapes
that are known to compile slowly (nested bounded repetition) before anything is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from backends.base import BackendRequest, BackendResponse, Usage
from backends.errors import UpstreamConnectionError, UpstreamRejected
from service.config import BackendConfig, Settings, StructuredLimits
from service.metrics import Metrics, sample
from service.pipeline.extractor import Extractor
from service.schemas.shape import measure
from service.state import AppState
from tests.fakes import FakeBackend

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
OTHER = {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}
# All bounds at most 100, yet xgrammar unrolls it to 20,000 units: 12 s to compile on the 2-core EPYC.
NESTED = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(([a-z]{1,100}[0-9]{1,100}){1,100})"}}}


class HangingProbe(FakeBackend):
    """Answers extractions from the queue; a probe waits until released (a grammar that compiles forever)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.release = asyncio.Event()

    async def complete(self, request: BackendRequest) -> BackendResponse:
        if request.purpose == "probe":
            self.probes.append(request)
            await self.release.wait()
            return BackendResponse(text="{}", usage=Usage(5, 1), model="m", finish_reason="length", latency_s=0.0)
        return await super().complete(request)


def build(make_settings: Callable[..., Settings], factory: type[FakeBackend] = FakeBackend, **backend: Any) -> AppState:
    settings = make_settings({"main": {"kind": "vllm", "model": "m", "max_attempts": 2, **backend}})
    state = AppState.build(settings, factory)
    state.extractor = Extractor(settings, state.backends, state.metrics, state.tasks)
    return state


def fake(state: AppState) -> FakeBackend:
    backend = state.backends["main"]
    assert isinstance(backend, FakeBackend)
    return backend


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return sample(metrics.registry, name, **labels)


async def test_a_new_schema_is_probed_once_with_one_token_and_keeps_the_grammar(make_settings: Any) -> None:
    state = build(make_settings)
    backend = fake(state)
    backend.enqueue('{"a": "x"}', '{"a": "y"}')
    for _ in range(2):
        result = await state.extractor.extract("text", schema=SCHEMA)
        assert result.data["a"] in {"x", "y"}
    assert len(backend.probes) == 1
    probe = backend.probes[0]
    assert probe.max_output_tokens == 1 and probe.mode == "json_schema" and probe.schema == SCHEMA
    assert probe.timeout_s == 10.0  # the default budget for kind vllm
    assert [r.mode for r in backend.requests] == ["json_schema", "json_schema"]
    assert count(state.metrics, "extraction_grammar_probes_total", backend="main", outcome="ok") == 1
    assert count(state.metrics, "extraction_structured_output_degraded_total", backend="main", task="adhoc") == 0


async def test_a_probe_past_the_budget_degrades_that_schema_to_json_mode_counted(make_settings: Any) -> None:
    state = build(make_settings, HangingProbe, structured_limits={"compile_budget_s": 0.05})
    backend = fake(state)
    assert isinstance(backend, HangingProbe)
    backend.enqueue('{"a": "x"}', '{"a": "y"}', '{"b": 1}')
    first = await state.extractor.extract("text", schema=SCHEMA)
    second = await state.extractor.extract("text", schema=SCHEMA)
    assert (first.data, second.data) == ({"a": "x"}, {"a": "y"})
    assert [r.mode for r in backend.requests] == ["json_object", "json_object"]
    assert len(backend.probes) == 1  # decided once: the second request does not wait again
    assert count(state.metrics, "extraction_grammar_probes_total", backend="main", outcome="slow") == 1
    assert count(state.metrics, "extraction_structured_output_degraded_total", backend="main", task="adhoc") == 2
    # Another schema is judged on its own (its probe answers once the engine is free again).
    backend.release.set()
    third = await state.extractor.extract("text", schema=OTHER)
    assert third.data == {"b": 1} and backend.requests[-1].mode == "json_schema"


async def test_a_slow_verdict_expires_and_the_schema_is_probed_again_a_refusal_does_not(make_settings: Any) -> None:
    # A probe that waited behind a busy engine must not demote a schema (a shipped task's) until a restart.
    state = build(make_settings, HangingProbe, structured_limits={"compile_budget_s": 0.05, "reprobe_after_s": 60})
    backend = fake(state)
    assert isinstance(backend, HangingProbe)
    now = [1000.0]
    state.extractor.attempts.modes.clock = lambda: now[0]
    backend.enqueue('{"a": "x"}', '{"a": "y"}', '{"a": "z"}')
    await state.extractor.extract("text", schema=SCHEMA)
    now[0] += 59.0
    await state.extractor.extract("text", schema=SCHEMA)  # still within the verdict: no second probe
    assert len(backend.probes) == 1 and [r.mode for r in backend.requests] == ["json_object", "json_object"]
    backend.release.set()  # the engine is free again
    now[0] += 2.0
    await state.extractor.extract("text", schema=SCHEMA)
    assert len(backend.probes) == 2 and backend.requests[-1].mode == "json_schema"
    assert count(state.metrics, "extraction_grammar_probes_total", backend="main", outcome="ok") == 1

    refused = build(make_settings, structured_limits={"reprobe_after_s": 1})
    engine = fake(refused)
    refused.extractor.attempts.modes.clock = lambda: now[0]
    engine.probe_answer = UpstreamRejected("grammar not supported: lookahead", backend="main", status_code=400)
    engine.enqueue('{"a": "x"}', '{"a": "y"}')
    await refused.extractor.extract("text", schema=SCHEMA)
    now[0] += 3600.0
    await refused.extractor.extract("text", schema=SCHEMA)
    assert len(engine.probes) == 1 and [r.mode for r in engine.requests] == ["json_object", "json_object"]


async def test_concurrent_requests_with_one_new_schema_share_one_probe(make_settings: Any) -> None:
    state = build(make_settings, HangingProbe)
    backend = fake(state)
    assert isinstance(backend, HangingProbe)
    backend.enqueue(*['{"a": "x"}'] * 3)
    calls = [asyncio.create_task(state.extractor.extract("text", schema=SCHEMA)) for _ in range(3)]
    while not backend.probes:
        await asyncio.sleep(0)
    for _ in range(20):  # let every request reach the probe
        await asyncio.sleep(0)
    assert len(backend.probes) == 1 and not backend.requests
    backend.release.set()
    results = await asyncio.gather(*calls)
    assert [r.data for r in results] == [{"a": "x"}] * 3
    assert len(backend.probes) == 1 and [r.mode for r in backend.requests] == ["json_schema"] * 3


async def test_a_refused_grammar_degrades_and_an_undecided_probe_is_tried_again(make_settings: Any) -> None:
    state = build(make_settings)
    backend = fake(state)
    backend.probe_answer = UpstreamRejected("grammar not supported: lookahead", backend="main", status_code=400)
    backend.enqueue('{"a": "x"}')
    await state.extractor.extract("text", schema=SCHEMA)
    assert backend.requests[-1].mode == "json_object"
    assert count(state.metrics, "extraction_grammar_probes_total", backend="main", outcome="rejected") == 1

    backend.probe_answer = UpstreamConnectionError("connection refused", backend="main")
    backend.enqueue('{"b": 1}', '{"b": 2}')
    await state.extractor.extract("text", schema=OTHER)
    assert backend.requests[-1].mode == "json_schema"  # nothing decided: the request goes on as it was
    backend.probe_answer = "{}"
    await state.extractor.extract("text", schema=OTHER)
    assert count(state.metrics, "extraction_grammar_probes_total", backend="main", outcome="error") == 1
    assert count(state.metrics, "extraction_grammar_probes_total", backend="main", outcome="ok") == 1


@pytest.mark.parametrize(
    "backend",
    [{"kind": "openai"}, {"structured_limits": {"compile_budget_s": 0}}, {"structured_output": "json_object"}],
)
async def test_no_probe_for_hosted_apis_when_off_or_without_a_grammar(
    make_settings: Any, backend: dict[str, Any]
) -> None:
    state = build(make_settings, **backend)
    fake(state).enqueue('{"a": "x"}')
    await state.extractor.extract("text", schema=SCHEMA)
    assert fake(state).requests and not fake(state).probes


async def test_nested_bounded_repetition_degrades_before_any_probe(make_settings: Any) -> None:
    assert measure(NESTED, len(json.dumps(NESTED))).max_repeat == 20_000
    state = build(make_settings)
    fake(state).enqueue('{"a": "ab1"}')
    result = await state.extractor.extract("text", schema=NESTED)
    assert result.data == {"a": "ab1"} and fake(state).requests[0].mode == "json_object"
    assert not fake(state).probes


def test_budget_defaults_by_kind() -> None:
    assert StructuredLimits().probe_budget("vllm") == 10.0
    assert StructuredLimits().probe_budget("openai") == 0.0
    assert StructuredLimits(compile_budget_s=2.5).probe_budget("openai") == 2.5
    assert BackendConfig(name="x", kind="vllm", model="m").structured_limits.probe_budget("vllm") == 10.0


@pytest.mark.parametrize(
    ("pattern", "size"),
    [
        ("[a-z]{0,1000}", 1000),
        ("(([a-z]{1,20}[0-9]{1,20}){1,30})", 1200),
        ("(a|bc){3}", 6),
        ("(?:ab){10}", 20),
        ("[\\]x]{5}", 5),
        ("^(a+)+$", 0),  # unbounded: a loop, not copies (runaway matching is the validator's concern)
        ("(a{10}", 10),  # unbalanced: estimated, never an error here
    ],
)
def test_pattern_size_multiplies_nested_bounds(pattern: str, size: int) -> None:
    schema = {"type": "string", "pattern": pattern}
    assert measure(schema, 10).max_repeat == size


async def test_a_value_rule_the_grammar_lacks_is_left_to_validation_not_the_whole_schema(make_settings: Any) -> None:
    # was: `multipleOf` anywhere sent the whole request in JSON mode, and a small model then lost the structure
    money = {"type": "object", "required": ["price"], "additionalProperties": False,
             "properties": {"price": {"type": "number", "multipleOf": 0.01}}}  # fmt: skip
    state = build(make_settings)
    backend = fake(state)
    backend.enqueue('{"price": 19.999}', '{"price": 19.99}')  # the grammar cannot stop the first: re-asked
    result = await state.extractor.extract("The coffee costs 19.99 EUR.", schema=money)
    assert result.data == {"price": 19.99} and result.attempts == 2
    sent = {"type": "object", "required": ["price"], "additionalProperties": False,
            "properties": {"price": {"type": "number"}}}  # fmt: skip
    assert [(r.mode, r.schema) for r in backend.requests] == [("json_schema", sent), ("json_schema", sent)]
    assert backend.probes[0].schema == sent
    assert count(state.metrics, "extraction_structured_output_degraded_total", backend="main", task="adhoc") == 0
