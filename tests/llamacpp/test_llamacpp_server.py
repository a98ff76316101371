"""The real llama-server (the packaged Q4_1 GGUF as it ships, a shipped adapter converted to a GGUF LoRA)
behind the service: grammar-enforced answers, an adapter chosen per request by name, the prompt prefix
served from the slot cache, and the same explicit degrade rule as for vLLM."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backends.base import BackendRequest
from backends.config import Endpoint
from backends.local import llamacpp, llamacpp_build
from backends.local.base_model import prepare
from backends.local.config import LlamaCppServer
from backends.local.llamacpp import LlamaCppError, LlamaCppProcess
from backends.local.llamacpp_build import ensure_llama_cpp
from backends.openai_compat import OpenAIBackend
from loadtest.mock_upstream import ServerThread
from service.app import create_app
from service.config import DEFAULT_CONFIG, Settings
from service.metrics import sample
from tests.conftest import free_port, write_config

pytestmark = [pytest.mark.llamacpp, pytest.mark.integration]

SHIPPED_INVOICE = DEFAULT_CONFIG.parent.parent / "training" / "adapters" / "invoice"
INVOICE = (
    "Brightline Consulting Ltd\nInvoice INV-2291\nDate: 2024-06-18\nConsulting, June: 2,450.00\n"
    "Amount due: 2,450.00 USD"
)


@dataclass
class Llama:
    server: LlamaCppProcess
    url: str
    app: object


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Llama]:
    ensure_llama_cpp()
    prepare()  # the converter reads the base model's config
    adapters = {"invoice-lora": str(SHIPPED_INVOICE)} if SHIPPED_INVOICE.is_dir() else {}
    server = LlamaCppProcess(LlamaCppServer(port=free_port(), parallel=2, adapters=adapters))
    server.start()
    local = {"kind": "llamacpp", "base_url": f"{server.url}/v1", "timeout_s": 300, "max_attempts": 2,
             "context_window": 2048, "pricing": {"input_per_1k": 0.0002, "output_per_1k": 0.0002}}  # fmt: skip
    config = write_config(
        tmp_path_factory.mktemp("llama") / "config.yaml",
        {
            "llama-prompted": {**local, "model": "smollm2-135m", "prompt_style": "few_shot"},
            "llama-invoice": {**local, "model": "invoice-lora", "prompt_style": "finetuned"},
            "llama-added": {**local, "model": "invoice-added", "prompt_style": "finetuned"},
        },
        retry={"deadline_s": 600},
    )
    app = create_app(Settings(config=config))  # type: ignore[call-arg]
    try:
        with ServerThread(app) as api:
            yield Llama(server, api.url, app)
    finally:
        server.stop()
        server.forget_loaded()


def post(llama: Llama, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{llama.url}/v1/extract", json=body, timeout=600)


def count(llama: Llama, name: str, **labels: str) -> float:
    return sample(llama.app.state.extraction.metrics.registry, name, **labels)  # type: ignore[attr-defined]


def test_the_packaged_gguf_answers_schema_valid_json_under_its_grammar(llama: Llama) -> None:
    for _ in range(2):
        response = post(llama, {"task": "invoice", "text": INVOICE})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["structured_output"] == "json_schema" and body["backend"] == "llama-prompted"
        assert set(body["data"]) == {"company", "invoice_date", "total_amount", "currency"}
    # The instructions, schema and examples come first: the second request found them in the slot's cache.
    cached = count(llama, "extraction_tokens_total", backend="llama-prompted", task="invoice", direction="cached_input")
    assert cached > 500


def test_a_shipped_adapter_is_applied_per_request_by_name(llama: Llama) -> None:
    if not SHIPPED_INVOICE.is_dir():
        pytest.fail(f"the shipped invoice adapter is missing at {SHIPPED_INVOICE}")
    assert "invoice-lora" in llama.server.lora_ids()
    response = post(llama, {"task": "invoice", "text": INVOICE, "backend": "llama-invoice"})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {
        "company": "Brightline Consulting Ltd",
        "invoice_date": "2024-06-18",
        "total_amount": 2450.0,
        "currency": "USD",
    }


def test_the_base_model_is_the_base_model_while_adapters_are_loaded(llama: Llama) -> None:
    # llama-server's own scales are 1 for every adapter loaded, even with --lora-init-without-apply, so a request
    # with `lora: []` ran the base model with every adapter added. The truth: the same request to a server
    # holding no adapter at all.
    if not SHIPPED_INVOICE.is_dir():
        pytest.fail(f"the shipped invoice adapter is missing at {SHIPPED_INVOICE}")
    request = BackendRequest(messages=[{"role": "user", "content": f"Summarise this:\n{INVOICE}"}], mode="none",
                             max_output_tokens=32, timeout_s=300)  # fmt: skip

    async def answer(url: str, model: str) -> str:
        backend = OpenAIBackend(Endpoint(name="b", kind="llamacpp", base_url=f"{url}/v1", model=model))
        try:
            return (await backend.complete(request)).text
        finally:
            await backend.aclose()

    bare = LlamaCppProcess(LlamaCppServer(port=free_port(), parallel=2))
    bare.start()
    try:
        truth = asyncio.run(answer(bare.url, "smollm2-135m"))
    finally:
        bare.stop()
    assert asyncio.run(answer(llama.server.url, "smollm2-135m")) == truth  # base: every adapter at scale 0
    assert asyncio.run(answer(llama.server.url, "invoice-lora")) != truth  # and the adapter still applies


def test_what_the_grammar_cannot_express_degrades_to_json_mode_counted(llama: Llama) -> None:
    # patternProperties beside additionalProperties: false cannot be left out (that would narrow the schema)
    schema = {"type": "object", "properties": {"contact": {"type": "string"}}, "required": ["contact"],
              "patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": False}  # fmt: skip
    response = post(llama, {"schema": schema, "text": "Write to ops@example.com", "options": {"max_attempts": 2}})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert response.json()["structured_output"] == "json_object"
    assert count(llama, "extraction_structured_output_degraded_total", backend="llama-prompted", task="adhoc") == 1


def test_a_value_rule_the_grammar_lacks_keeps_the_grammar_for_the_rest(llama: Llama) -> None:
    # llama.cpp's grammar has no `email` format: it holds the structure, validation holds the format
    schema = {"type": "object", "properties": {"contact": {"type": "string", "format": "email"}},
              "required": ["contact"]}  # fmt: skip
    response = post(llama, {"schema": schema, "text": "Write to ops@example.com", "options": {"max_attempts": 2}})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        body = response.json()
        assert body["structured_output"] == "json_schema" and "@" in body["data"]["contact"]


def test_load_adapter_serves_a_new_adapter_by_name_and_unload_takes_it_away(llama: Llama) -> None:
    if not SHIPPED_INVOICE.is_dir():
        pytest.fail(f"the shipped invoice adapter is missing at {SHIPPED_INVOICE}")
    with pytest.raises(LlamaCppError, match="neither a GGUF LoRA file nor a peft adapter folder"):
        llama.server.load_adapter("invoice-added", SHIPPED_INVOICE.parent)
    assert "invoice-added" not in llama.server.lora_ids()  # the refused load left the server as it was
    away = llama.server.load_adapter("invoice-added", SHIPPED_INVOICE)
    assert away < 60 and llama.server.healthy()
    assert set(llama.server.lora_ids()) == {"invoice-lora", "invoice-added"}
    for backend in ("llama-added", "llama-invoice"):  # the new one by its name; the configured one still there
        response = post(llama, {"task": "invoice", "text": INVOICE, "backend": backend})
        assert response.status_code == 200, response.text
        assert response.json()["data"]["invoice_date"] == "2024-06-18"
        assert response.json()["data"]["total_amount"] == 2450.0
    llama.server.unload_adapter("invoice-added")
    assert set(llama.server.lora_ids()) == {"invoice-lora"} and llama.server.loaded() == {}


def gguf_file_type(path: Path) -> int:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


def test_quant_serves_the_packaged_model_re_quantised_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gguf import LlamaFileType

    built = ensure_llama_cpp()
    for module in (llamacpp, llamacpp_build):  # the real build; conversions and run files in tmp_path
        monkeypatch.setattr(module, "home", lambda: built)
    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path))
    server = LlamaCppProcess(LlamaCppServer(port=free_port(), parallel=1, quant="q8_0"))
    served = server.model_path()
    assert served.parent == tmp_path / "llamacpp" / "models" and served.name.endswith(".Q8_0.gguf")
    assert not served.exists()
    server.start()
    try:
        assert gguf_file_type(served) == LlamaFileType.MOSTLY_Q8_0
        assert gguf_file_type(server.source_model()) == LlamaFileType.MOSTLY_Q4_1  # the source is left as it is
        assert server.status()["model"] == str(served) and server.status()["quant"] == "Q8_0"
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 4})  # fmt: skip
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        modified = served.stat().st_mtime_ns
    finally:
        server.stop()
    server.start()  # the conversion is cached: not done again
    server.stop()
    assert served.stat().st_mtime_ns == modified
