"""The demo's side-by-side: the prompted and the fine-tuned answer to the same text, graded, with a verdict."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
from rich.console import Console

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.config import Settings
from service.demo import EXPECTED, compare_samples, grade, verdict
from tests.conftest import backend_entry


def test_grading_is_by_field_and_lenient_on_case_spacing_and_list_order() -> None:
    assert grade("invoice", EXPECTED["invoice"]) == (4, 4)
    assert grade("invoice", {"company": "nordwind  logistik gmbh", "invoice_date": None, "total_amount": 845.20,
                             "currency": "EUR"}) == (3, 4)  # fmt: skip
    assert grade("entities", {"persons": ["maria lopez"], "organizations": ["Google"], "locations": []}) == (2, 3)
    assert grade("email_triage", {"category": "billing"}) is None  # no single right answer: not graded
    assert grade("invoice", None) == (0, 4)


def test_side_by_side_runs_both_backends_on_the_same_text(
    upstream: MockUpstream, make_settings: Callable[..., Settings]
) -> None:
    url = f"{upstream.url}/v1"  # type: ignore[attr-defined]
    settings = make_settings({"prompted": backend_entry(url), "ft": backend_entry(url, model="ft-model",
                              prompt_style="finetuned", pricing={"input_per_1k": 0.0002, "output_per_1k": 0.0002})},
                             routes={"invoice": "ft"})  # fmt: skip
    wrong = {"company": None, "invoice_date": None, "total_amount": None, "currency": None}
    # SAMPLES order: invoice first (prompted, then ft), then the other tasks' prompted answers (the queue's default)
    upstream.enqueue(Reply(content=json.dumps(wrong), usage=(1000, 20)),
                     Reply(content=json.dumps(EXPECTED["invoice"]), usage=(120, 20)))  # fmt: skip
    out = io.StringIO()
    console = Console(file=out, width=200)
    with ServerThread(create_app(settings)) as api:
        rows = compare_samples(api.url, ["prompted", "ft"], "prompted", console)
    invoice = [r for r in rows if r["task"] == "invoice"]
    assert [r["backend"] for r in invoice] == ["prompted", "ft"]
    assert all(r["status"] == 200 for r in invoice)
    assert all(r["backend"] == "prompted" for r in rows if r["task"] != "invoice")  # no adapter routed there
    printed = out.getvalue()
    assert "ft 4/4 fields right vs prompted 0/4" in printed
    assert "8.3x fewer input tokens" in printed


def test_verdict_with_one_answer_says_so() -> None:
    assert "one backend answered" in verdict([])


def test_verdict_says_slower_when_the_fine_tuned_answer_took_longer() -> None:
    def body(tokens: int, ms: float) -> dict[str, object]:
        return {"usage": {"input_tokens": tokens}, "latency_ms": ms}

    slow = verdict([("prompted", (1, 4), body(1000, 2000.0)), ("ft", (3, 4), body(100, 3000.0))])
    assert slow.endswith("ft used 10.0x fewer input tokens and was 1.5x slower")
    fast = verdict([("prompted", (1, 4), body(1000, 3000.0)), ("ft", (3, 4), body(100, 1000.0))])
    assert fast.endswith("was 3.0x faster")


def test_the_demo_refuses_a_port_in_use_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """An API left running on the port would answer the new one's health check; the demo says so instead."""
    import socket

    from service import demo as demo_module

    started: list[str] = []
    monkeypatch.setattr(demo_module, "start_engine", lambda *a: started.append("engine"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port} is already in use"):
            demo_module.demo(Settings(), "127.0.0.1", port, False, Console(file=io.StringIO()))  # type: ignore[call-arg]
    assert started == []  # nothing was started
    demo_module.ensure_port_free("127.0.0.1", port)  # free again: no error
