"""The README's example requests, run against the shipped default config on the real engine it chooses here:
each answer's fields must be what the README shows (latency, tokens and cost are not compared; they vary by machine).

An example in README.md is marked `<!-- example: NAME -->`, followed by a ```bash block with one curl (its
`-d '...'` body and any `-H` headers) and then a ```json block with the response the default config returned on
the CPU class `<!-- examples-from: CLASS -->` names. A 135M model's greedy near-ties fall differently on other SIMD
kernels, so where another class answered otherwise the README says so and records it as
`<!-- example-variant: NAME CLASS: {the differing fields} -->`: on that class the variant is expected; on a class
with no record (not measured) the shown answer or any recorded variant is accepted."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.local.hardware import CpuInfo, read_cpu
from tests.default.conftest import DefaultService

pytestmark = [pytest.mark.vllm, pytest.mark.llamacpp, pytest.mark.integration]

README = Path(__file__).resolve().parents[2] / "README.md"
COMPARED = ("data", "task", "backend", "model", "structured_output", "grounding")


def examples(text: str) -> dict[str, tuple[dict[str, str], dict[str, Any], dict[str, Any]]]:
    """NAME -> (headers, request body, shown response) for every marked example."""
    found = {}
    for m in re.finditer(r"<!-- example: ([\w-]+) -->\s*```bash\n(.*?)```.*?```json\n(.*?)```", text, re.S):
        name, curl, shown = m.group(1), m.group(2), m.group(3)
        words = shlex.split(curl.replace("\\\n", " "))
        headers = {}
        body: dict[str, Any] = {}
        for flag, value in zip(words, words[1:], strict=False):
            if flag == "-H":
                key, _, val = value.partition(":")
                headers[key.strip().lower()] = val.strip()
            elif flag == "-d":
                body = json.loads(value)
        found[name] = (headers, body, json.loads(shown))
    return found


def variants(text: str) -> dict[str, dict[str, dict[str, Any]]]:
    """NAME -> {CPU class -> the fields that differ from the shown answer on that class}."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for m in re.finditer(r"<!-- example-variant: ([\w-]+) (\w+): (.*?) -->", text, re.S):
        found.setdefault(m.group(1), {})[m.group(2)] = json.loads(m.group(3))
    return found


def simd_class(cpu: CpuInfo) -> str:
    """The kernels llama.cpp's native build and vLLM-CPU pick: amx, avx512, avx2 (x86), sve, neon (Arm) or plain."""
    for flag, name in (("amx_tile", "amx"), ("avx512f", "avx512"), ("avx2", "avx2"), ("sve", "sve"), ("asimd", "neon")):
        if flag in cpu.flags:
            return name
    return "plain"


README_TEXT = README.read_text(encoding="utf-8")
EXAMPLES = examples(README_TEXT)
VARIANTS = variants(README_TEXT)
SHOWN_FROM = re.search(r"<!-- examples-from: (\w+) -->", README_TEXT)
# an example shown as another class answered it (re-measured there): `<!-- example-from: NAME CLASS -->`
EXAMPLE_FROM = dict(re.findall(r"<!-- example-from: ([\w-]+) (\w+) -->", README_TEXT))


def expected_answers(name: str, cpu_class: str) -> list[dict[str, Any]]:
    """The answers acceptable on this CPU class: exactly one where the class was measured, else all recorded."""
    shown = {k: EXAMPLES[name][2][k] for k in COMPARED}
    recorded = VARIANTS.get(name, {})
    if cpu_class in recorded:
        return [{**shown, **recorded[cpu_class]}]
    if cpu_class == EXAMPLE_FROM.get(name, SHOWN_FROM.group(1) if SHOWN_FROM else None):
        return [shown]
    return [shown, *({**shown, **v} for v in recorded.values())]


def test_the_readme_has_the_examples_this_test_runs() -> None:
    assert {"invoice", "invoice-prompted", "receipt", "support-intent", "entities"} <= set(EXAMPLES)
    assert SHOWN_FROM, "the README names the CPU class its answers came from: <!-- examples-from: CLASS -->"
    assert set(VARIANTS) <= set(EXAMPLES), "a variant for an example the README does not have"
    assert set(EXAMPLE_FROM) <= set(EXAMPLES), "a class named for an example the README does not have"
    for name, by_class in VARIANTS.items():
        for cpu_class, fields in by_class.items():
            assert fields and set(fields) <= set(COMPARED), (name, cpu_class, fields)


def test_a_measured_class_expects_its_own_answer_and_an_unmeasured_one_any_recorded() -> None:
    name = "entities"
    assert VARIANTS.get(name), "the README records the entities answer of a second CPU class"
    cpu_class, fields = next(iter(VARIANTS[name].items()))
    [on_it] = expected_answers(name, cpu_class)
    assert on_it["data"] == fields.get("data", EXAMPLES[name][2]["data"])
    assert expected_answers(name, SHOWN_FROM.group(1) if SHOWN_FROM else "") == [
        {k: EXAMPLES[name][2][k] for k in COMPARED}
    ]
    assert len(expected_answers(name, "never-measured")) == 1 + len(VARIANTS[name])


def test_an_example_re_measured_on_another_class_expects_its_answer_there_only() -> None:
    for name, cpu_class in EXAMPLE_FROM.items():
        shown = {k: EXAMPLES[name][2][k] for k in COMPARED}
        assert expected_answers(name, cpu_class) == [shown]
        if SHOWN_FROM and SHOWN_FROM.group(1) != cpu_class and SHOWN_FROM.group(1) not in VARIANTS.get(name, {}):
            assert shown in expected_answers(name, SHOWN_FROM.group(1))  # not measured there: any recorded


def test_simd_class_follows_the_flags() -> None:
    def cpu(*flags: str) -> CpuInfo:
        return CpuInfo(model="x", flags=frozenset(flags), arch="x86_64", cores=2)

    assert simd_class(cpu("avx2", "fma")) == "avx2"
    assert simd_class(cpu("avx2", "avx512f", "avx512_bf16")) == "avx512"
    assert simd_class(cpu("avx2", "avx512f", "amx_tile", "amx_bf16")) == "amx"
    assert simd_class(cpu("asimd", "sve")) == "sve"
    assert simd_class(cpu()) == "plain"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_answers_as_shown(default_service: DefaultService, name: str) -> None:
    headers, body, _shown = EXAMPLES[name]
    headers.pop("content-type", None)
    response = httpx.post(f"{default_service.url}/v1/extract", json=body, headers=headers, timeout=300)
    assert response.status_code == 200, response.text
    got = response.json()
    cpu_class = simd_class(read_cpu())
    assert {k: got[k] for k in COMPARED} in expected_answers(name, cpu_class), (
        f"{name} on {cpu_class} ({read_cpu().describe()}): {json.dumps({k: got[k] for k in COMPARED})}"
    )
