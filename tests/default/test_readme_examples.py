"""The README's example requests, run against the shipped default config on the real engine it chooses here:
each answer's fields must be what the README shows (latency, tokens and cost are not compared; they vary by machine).

An example in README.md is marked `<!-- example: NAME -->`, followed by a ```bash block with one curl (its
`-d '...'` body and any `-H` headers) and then a ```json block with the response the default config returned."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest

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


EXAMPLES = examples(README.read_text(encoding="utf-8"))


def test_the_readme_has_the_examples_this_test_runs() -> None:
    assert {"invoice", "invoice-prompted", "receipt", "support-intent", "entities"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_answers_as_shown(default_service: DefaultService, name: str) -> None:
    headers, body, shown = EXAMPLES[name]
    headers.pop("content-type", None)
    response = httpx.post(f"{default_service.url}/v1/extract", json=body, headers=headers, timeout=300)
    assert response.status_code == 200, response.text
    got = response.json()
    assert {k: got[k] for k in COMPARED} == {k: shown[k] for k in COMPARED}
