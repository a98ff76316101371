"""PII detection and the per-task output policy (allow / redact / reject), with known fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from loadtest.mock_upstream import Reply, ServerThread
from service.app import create_app
from service.config import Settings
from service.metrics import sample
from service.pii import PiiPolicy, find_pii, iban_ok, luhn_ok, redact_text, scan
from tests.conftest import backend_entry

TEXT = (
    "Contact jane.doe+billing@example.co.uk or call +49 30 901820 / (415) 555-0132. "
    "Pay to DE89 3704 0044 0532 0130 00, card 4111 1111 1111 1111. Order 1234-5678-9012 total 1,234.50 EUR."
)


def test_finds_each_kind_and_not_order_numbers_or_amounts() -> None:
    kinds = [(f.kind, TEXT[f.start : f.end]) for f in find_pii(TEXT, regions=["US", "DE"])]
    assert kinds == [
        ("email", "jane.doe+billing@example.co.uk"),
        ("phone", "+49 30 901820"),
        ("phone", "(415) 555-0132"),
        ("iban", "DE89 3704 0044 0532 0130 00"),
        ("card_number", "4111 1111 1111 1111"),
    ]


def test_checksums_reject_lookalikes() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert find_pii("IBAN DE89370400440532013001; card 4111 1111 1111 1112") == []


def test_redaction_replaces_findings_only() -> None:
    text = "mail a@b.io now"
    assert redact_text(text, find_pii(text)) == "mail [EMAIL] now"


def test_scan_walks_nested_values_and_reports_paths() -> None:
    data = {"name": "Jane", "contacts": ["a@b.io", "n/a"], "bank": {"iban": "DE89370400440532013000"}, "n": 5}
    redacted, hits = scan(data, PiiPolicy(action="redact"))
    assert redacted == {"name": "Jane", "contacts": ["[EMAIL]", "n/a"], "bank": {"iban": "[IBAN]"}, "n": 5}
    assert hits == [("$.contacts[0]", "email"), ("$.bank.iban", "iban")]
    _, only_iban = scan(data, PiiPolicy(action="reject", kinds=["iban"]))
    assert only_iban == [("$.bank.iban", "iban")]


@pytest.mark.parametrize("text", ["Total 1,234.50 EUR on 2024-03-14", "Invoice INV-2024-00017, 12 items"])
def test_ordinary_invoice_text_is_clean(text: str) -> None:
    assert find_pii(text, regions=["US", "GB", "DE", "ES", "FR"]) == []


@pytest.mark.integration
@pytest.mark.parametrize("action", ["allow", "redact", "reject"])
def test_output_policy_over_http(action: str, upstream: Any, make_settings: Callable[..., Settings]) -> None:
    answer = {"persons": ["Jane"], "organizations": ["mail jane@example.com"], "locations": [], "dates": []}
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1")}, pii={"action": action})
    upstream.enqueue(Reply(content=json.dumps(answer)))
    app = create_app(settings)
    with ServerThread(app) as api:
        r = httpx.post(f"{api.url}/v1/extract", json={"task": "entities", "text": "Jane, jane@example.com"})
    registry = app.state.extraction.metrics.registry
    found = sample(registry, "extraction_pii_findings_total", task="entities", kind="email", action=action)
    if action == "allow":
        assert r.status_code == 200 and r.json()["data"] == answer and found == 0
    elif action == "redact":
        assert r.status_code == 200 and r.json()["data"]["organizations"] == ["mail [EMAIL]"] and found == 1
    else:
        assert r.status_code == 422 and r.json()["error"]["code"] == "pii_detected" and found == 1
        assert r.json()["error"]["details"]["findings"] == [{"path": "$.organizations[0]", "kind": "email"}]
        assert "jane@example.com" not in r.text
