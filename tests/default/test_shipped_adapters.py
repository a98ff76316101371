"""The adapters that ship in training/adapters, loaded by the real engine the default config chooses: every
task with an adapter routes to it, answers a typical document correctly, and `local-prompted` is one header away."""

from __future__ import annotations

import httpx
import pytest

from tests.default.conftest import DefaultService, shipped_adapters

pytestmark = [pytest.mark.vllm, pytest.mark.llamacpp, pytest.mark.integration]

INVOICE = (
    "Brightline Consulting Ltd\nInvoice INV-2291\nDate: 2024-06-18\nConsulting, June: 2,450.00\n"
    "Amount due: 2,450.00 USD"
)
RECEIPT = (
    "KEDAI RUNCIT MAJU JAYA\nNO. 8, JALAN PASAR 2,\n43000 KAJANG, SELANGOR\nDATE: 14/02/2019 10:21\n"
    "MILO 2 x 4.50 9.00\nROTI 1 x 2.80 2.80\nTOTAL RM 11.80\nCASH RM 20.00\nCHANGE RM 8.20"
)


def extract(service: DefaultService, task: str, text: str, backend: str | None = None) -> dict[str, object]:
    headers = {"X-Extraction-Backend": backend} if backend else {}
    response = httpx.post(f"{service.url}/v1/extract", json={"task": task, "text": text}, headers=headers, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_shipped_adapters_are_served() -> None:
    assert set(shipped_adapters()) == {"invoice-lora", "receipt-lora", "support-intent-lora", "entities-lora"}


def test_the_invoice_adapter_reads_an_invoice(default_service: DefaultService) -> None:
    body = extract(default_service, "invoice", INVOICE)
    assert (body["backend"], body["model"]) == ("local-invoice", "invoice-lora")
    assert body["data"] == {
        "company": "Brightline Consulting Ltd",
        "invoice_date": "2024-06-18",
        "total_amount": 2450.0,
        "currency": "USD",
    }


def test_the_receipt_adapter_reads_a_receipt(default_service: DefaultService) -> None:
    body = extract(default_service, "receipt", RECEIPT)
    assert (body["backend"], body["model"]) == ("local-receipt", "receipt-lora")
    data = body["data"]
    assert isinstance(data, dict)
    assert (data["company"], data["date"], data["total"]) == ("KEDAI RUNCIT MAJU JAYA", "2019-02-14", 11.8)
    assert " ".join(str(data["address"]).split()) == "NO. 8, JALAN PASAR 2, 43000 KAJANG, SELANGOR"


def test_the_base_model_stays_one_header_away(default_service: DefaultService) -> None:
    body = extract(default_service, "invoice", INVOICE, backend="local-prompted")
    assert (body["backend"], body["model"]) == ("local-prompted", "smollm2-135m")


def test_the_demo_prints_prompted_and_fine_tuned_side_by_side(default_service: DefaultService) -> None:
    """`make demo`'s command on the default config, on the engine it chose (already running here)."""
    import os
    import subprocess
    import sys

    from tests.conftest import free_port

    env = {**os.environ, "EXTRACTION_CONFIG": str(default_service.settings.config), "COLUMNS": "200"}
    command = [sys.executable, "-m", "service.cli", "demo", "--port", str(free_port()), "--no-keep-running"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "prompted vs fine-tuned, same text" in out
    for task, tuned in (("invoice", "local-invoice"), ("receipt", "local-receipt"), ("entities", "local-entities")):
        section = out.split(f"\n{task}", 1)[1].split("verdict:", 1)
        assert "local-prompted" in section[0] and tuned in section[0], task
        assert section[1].lstrip().startswith(f"{tuned} "), task  # the verdict compares the two
    engine = "llama.cpp" if default_service.engine == "llamacpp" else "vLLM"
    assert f"engine:  {engine} at" in out
