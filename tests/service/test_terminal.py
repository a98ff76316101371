"""Tables print whole where there is no terminal (CI logs, pipes): no header cut to `exa…`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rich.table import Table

from service.terminal import PIPE_WIDTH, console

HEADERS = ["backend", "items", "exact match", "field F1 micro", "schema valid", "input tokens/request",
           "output tokens/request", "P50 ms", "P95 ms", "requests/s", "USD/request", "USD/day"]  # fmt: skip


def test_a_wide_table_prints_whole_without_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("COLUMNS", raising=False)
    out = console()
    assert not out.is_terminal and out.width == PIPE_WIDTH
    table = Table(title="runs")
    for h in HEADERS:
        table.add_column(h)
    table.add_row("local-finetuned-receipt-merged", *["0.9231"] * (len(HEADERS) - 1))
    out.print(table)
    printed = capsys.readouterr().out
    assert "…" not in printed
    for h in HEADERS:
        assert h in printed
    assert "local-finetuned-receipt-merged" in printed


def test_the_cli_through_a_pipe_keeps_whole_headers() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "cost", "--input-tokens", "700", "--output-tokens", "150",
         "--price-in", "0.003", "--price-out", "0.006", "--ft-price", "0.0008", "--requests-per-day", "12000"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=True,
    )  # fmt: skip
    assert "per 30 days" in result.stdout and "…" not in result.stdout
