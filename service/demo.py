"""`extraction demo`: the local stack end to end - the local engine (llama.cpp or vLLM), the API, and a few
extractions per backend."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from backends.config import LOCAL_KINDS
from service.config import Settings

SAMPLES = {
    "invoice": "Nordwind Logistik GmbH\nRechnung Nr. 4471 vom 02.05.2024\nNetto 710,25 EUR, MwSt 134,95 EUR\n"
    "Gesamtbetrag: 845,20 EUR",
    "receipt": "CORNER DELI\n45 MAIN ST, SPRINGFIELD IL\n11/03/2022 12:01\nSANDWICH 6.50\nSODA 1.75\nTOTAL 8.25",
    "email_triage": "Hello, I was charged twice for my subscription this month. Please refund one of the charges.",
    "contract_clause": "This Agreement between Fabrikam Inc. and Tailspin Toys Ltd. shall be governed by the laws "
    "of England and Wales.",
    "entities": "Maria Lopez joined Google in Madrid in March 2021.",
    "support_intent": "I ordered my new card two weeks ago and it still has not arrived. Where is it?",
}


def ensure_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on: an API left running there would answer the health check in
    the new one's place (and the new one would fail to bind)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        if probe.connect_ex((host, port)) == 0:
            raise RuntimeError(f"{host}:{port} is already in use (an API left running there?); stop it, or pick "
                               "another port (--port, or PORT= for make demo)")  # fmt: skip


def start_api(config: Path, host: str, port: int, log_file: Path) -> subprocess.Popen[bytes]:
    """The API in a child process logging to `log_file`; returns once /healthz answers (the caller has made sure
    nothing else listens on the port: `ensure_port_free`)."""
    command = [sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--host", host,
               "--port", str(port)]  # fmt: skip
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}/healthz"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with code {process.returncode}; see {log_file}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError(f"the API did not answer {url} within 60 s")
        time.sleep(0.2)  # polling the health endpoint: a child process gives no other readiness signal


# The right answers to SAMPLES, field by field (only fields with one right answer are graded).
EXPECTED: dict[str, dict[str, Any]] = {
    "invoice": {"company": "Nordwind Logistik GmbH", "invoice_date": "2024-05-02", "total_amount": 845.2,
                "currency": "EUR"},
    "receipt": {"company": "CORNER DELI", "date": "2022-11-03", "address": "45 MAIN ST, SPRINGFIELD IL",
                "total": 8.25},
    "contract_clause": {"clause_type": "governing_law"},
    "entities": {"persons": ["Maria Lopez"], "organizations": ["Google"], "locations": ["Madrid"]},
    "support_intent": {"intent": "card_arrival"},
}  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return {_norm(x) for x in a} == {_norm(x) for x in b}
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(a - b) < 0.005
    return bool(_norm(a) == _norm(b))


def _norm(value: Any) -> Any:
    return " ".join(value.casefold().split()) if isinstance(value, str) else value


def grade(task: str, data: Any) -> tuple[int, int] | None:
    """(right, graded) fields of an answer against EXPECTED; None when the sample is not graded."""
    expected = EXPECTED.get(task)
    if not expected:
        return None
    got = data if isinstance(data, dict) else {}
    return sum(_same(got.get(k), v) for k, v in expected.items()), len(expected)


def routed_backends(api: str) -> dict[str, str]:
    """Task -> the backend it routes to now (an adapter once its folder exists, else the default)."""
    return {t["name"]: t["backend"] for t in httpx.get(f"{api}/v1/tasks", timeout=10).json()}


def available_backends(api: str, served: list[str], console: Console) -> list[str]:
    """Backends the demo can use now; says how to enable the others."""
    usable = []
    for backend in httpx.get(f"{api}/v1/backends", timeout=10).json():
        name, model = backend["name"], backend["model"]
        if backend["kind"] in LOCAL_KINDS and model not in served:
            console.print(
                f"[yellow]{name}[/yellow]: adapter [bold]{model}[/bold] is not served - train it (`make adapters` "
                f"for the shipped tasks, or `extraction train`) and serve it with "
                f"`extraction {backend['kind']} load-adapter {model} DIR`"
            )
        elif not backend["configured"]:
            console.print(f"[yellow]{name}[/yellow]: not configured (set OPENAI_API_KEY to use {model})")
        else:
            usable.append(name)
    return usable


def compare_samples(api: str, usable: list[str], prompted: str, console: Console) -> list[dict[str, Any]]:
    """Per task: the prompted answer and the fine-tuned one (where the task routes to an adapter) to the same
    text, side by side with latency, input tokens and cost, and a one-line verdict."""
    routes = routed_backends(api)
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=api, timeout=300) as client:
        for task, text in SAMPLES.items():
            pair = [prompted] + ([routes[task]] if routes.get(task) not in (None, prompted) else [])
            answers = []
            for backend in (b for b in pair if b in usable):
                r = client.post("/v1/extract", json={"task": task, "text": text, "backend": backend})
                answers.append({"task": task, "backend": backend, "status": r.status_code, "body": r.json()})
            rows.extend(answers)
            _show(task, answers, console)
    return rows


def _show(task: str, answers: list[dict[str, Any]], console: Console) -> None:
    table = Table(title=f"[bold]{task}[/bold]", show_lines=True, title_justify="left")
    for column in ("backend", "answer", "right", "latency ms", "input tokens", "USD"):
        table.add_column(column, overflow="fold")
    graded: list[tuple[str, tuple[int, int] | None, dict[str, Any]]] = []
    for a in answers:
        body = a["body"]
        if a["status"] == 200:
            score = grade(task, body["data"])
            table.add_row(a["backend"], json.dumps(body["data"], ensure_ascii=False),
                          f"{score[0]}/{score[1]}" if score else "-", f"{body['latency_ms']:.0f}",
                          str(body["usage"]["input_tokens"]), f"{body['cost_usd']:.6f}")  # fmt: skip
            graded.append((a["backend"], score, body))
        else:
            error = body["error"]
            table.add_row(a["backend"], f"{a['status']} {error['code']}: {error['message'][:160]}", "-", "-", "-", "-")
    console.print(table)
    console.print(verdict(graded))


def verdict(graded: list[tuple[str, tuple[int, int] | None, dict[str, Any]]]) -> str:
    """One line: who was right more often, and at what input size and latency."""
    if len(graded) < 2:
        return "  verdict: one backend answered (no adapter for this task, or the other failed)"
    (pa, ps, pb), (fa, fs, fb) = graded[0], graded[1]
    tokens = pb["usage"]["input_tokens"] / max(1, fb["usage"]["input_tokens"])
    speed = max(1.0, pb["latency_ms"]) / max(1.0, fb["latency_ms"])  # 1 ms floors: no division by zero
    quality = ""
    if ps and fs:
        quality = f"{fa} {fs[0]}/{fs[1]} fields right vs {pa} {ps[0]}/{ps[1]}; "
    pace = f"{speed:.1f}x faster" if speed >= 1 else f"{1 / speed:.1f}x slower"
    return f"  verdict: {quality}{fa} used {tokens:.1f}x fewer input tokens and was {pace}"


def heading(console: Console, title: str) -> None:
    """A rule across the terminal; in a pipe or CI log (no width to fill) one short line."""
    if console.is_terminal:
        console.rule(f"[bold]{title}")
    else:
        console.print(f"── {title} ──")


def run_samples(api: str, backends: list[str], console: Console) -> list[dict[str, Any]]:
    """One extraction per shipped sample and backend (backends without a side-by-side partner)."""
    results = []
    with httpx.Client(base_url=api, timeout=300) as client:
        for backend in backends:
            heading(console, backend)
            for task, text in SAMPLES.items():
                r = client.post("/v1/extract", json={"task": task, "text": text, "backend": backend})
                body = r.json()
                results.append(body)
                if r.status_code == 200:
                    usage = body["usage"]
                    console.print(
                        f"[bold]{task}[/bold]  {body['attempts']} attempt(s) · {body['latency_ms']:.0f} ms · "
                        f"{usage['input_tokens']} in / {usage['output_tokens']} out tokens · ${body['cost_usd']:.6f}"
                    )
                    console.print(f"  {json.dumps(body['data'], ensure_ascii=False)}", soft_wrap=True)
                else:
                    error = body["error"]
                    console.print(
                        f"[bold]{task}[/bold]  [red]{r.status_code} {error['code']}[/red]: {error['message']}"
                    )
    return results


def start_engine(settings: Settings, console: Console) -> tuple[Any, bool, list[str]]:
    """The local engine the config chose (local_engine), started unless running: (server, started, the
    model names it answers to)."""
    from backends.local.base_model import prepare

    if settings.engine == "llamacpp":
        from backends.local.llamacpp import LlamaCppProcess

        llama = LlamaCppProcess(settings.llamacpp, settings.config.parent)
        started = not llama.healthy()
        if started:
            console.print(f"base model: {prepare()}")  # the adapters' GGUF conversion reads it
            llama.start(log=console.print)
        adapters = llama.lora_ids()
        # llama-server has one model: a name that is no adapter of it is the base model
        local = {b.model for b in settings.backends.values() if b.kind == "llamacpp"}
        return llama, started, sorted(set(adapters) | (local - set(settings.llamacpp.adapters)))
    from backends.local.vllm import VllmProcess, ensure_vllm

    vllm = VllmProcess(settings.vllm, settings.config.parent)
    started = not vllm.healthy()
    if started:
        python = ensure_vllm(settings.vllm, log=console.print)
        if settings.vllm.model is None:
            console.print(f"base model: {prepare()}")
        vllm.start(python, log=console.print)
    return vllm, started, vllm.models()


def demo(settings: Settings, host: str, port: int, keep_running: bool, console: Console) -> None:
    """Start the local engine (unless running) and the API, print extractions for every usable backend, then
    serve."""
    import signal

    from backends.local.process import sigterm_interrupts

    ensure_port_free(host, port)  # before starting anything
    previous = sigterm_interrupts()  # `kill` stops the API and the engine it started, as Ctrl-C does
    try:
        run(settings, host, port, keep_running, console)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(settings: Settings, host: str, port: int, keep_running: bool, console: Console) -> None:
    why = settings.engine_reason
    console.print(f"local engine: {settings.engine} ({why})", soft_wrap=True)
    engine, started_engine, served = start_engine(settings, console)
    label = engine.label
    api_log = engine.log_file.with_name(f"api-{port}.log")
    api_process = start_api(settings.config, host, port, api_log)
    api = f"http://{host}:{port}"
    try:
        backends = available_backends(api, served, console)
        prompted = settings.default_backend
        heading(console, "prompted vs fine-tuned, same text")
        compare_samples(api, backends, prompted, console)
        others = [b for b in backends if b.startswith("openai")]
        if others:
            run_samples(api, others, console)
        console.print(
            f"\n[bold green]extraction-service is running[/bold green] at {api}\n"
            f"  docs:    {api}/docs\n  metrics: {api}/metrics\n  API log: {api_log}\n"
            f"  engine:  {label} at {engine.url} (log {engine.log_file}; {why})\n"
            f"  try:     curl -s {api}/v1/extract -H 'content-type: application/json' "
            """-d '{"task":"invoice","text":"ACME Ltd, 2024-05-01, total 99.90 EUR"}'"""
        )
        if keep_running:
            console.print("Ctrl-C stops the API" + (f" and {label}" if started_engine else ""))
            api_process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if keep_running or api_process.poll() is None:
            api_process.terminate()
            api_process.wait(timeout=30)
        if keep_running and started_engine:
            engine.stop()
