"""Run llama.cpp's `llama-server` as a local engine beside vLLM: built once per CPU, GGUF models as they ship,
peft LoRA adapters converted to GGUF and applied per request, JSON Schema enforced by its grammar.

    extraction llamacpp install | up | down | status | load-adapter NAME DIR | unload-adapter NAME

Why `llama-server` and not llama-cpp-python's server: it decodes several sequences at once (`--parallel`
slots, continuous batching; llama-cpp-python's server runs one at a time), applies a different LoRA per
request (`lora: [{id, scale}]`; llama-cpp-python binds one adapter to a model), keeps each slot's prompt
cache, and runs without a Python GIL in the serving path. Neither has a binary on PyPI; the llama.cpp
source comes from the llama-cpp-python sdist (the registry is the one source this project may reach), is
compiled with cmake for this CPU (`-DGGML_NATIVE=ON`) and cached by CPU flags, so a different CPU builds its
own. Loopback only: the API is the one public door.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from backends.local.base_model import cache_dir, default_model_dir, packaged_gguf
from backends.local.config import LlamaCppServer
from backends.local.hardware import read_cpu
from backends.local.llamacpp_build import LlamaCppError as LlamaCppError  # raised here too: caught by this name
from backends.local.llamacpp_build import ensure_llama_cpp, home
from backends.local.process import ManagedServer, ServerError, offline_env
from backends.openai_compat import llamacpp_lora_ids


def tool_env(root: Path) -> dict[str, str]:
    """The environment for the built tools: their libraries (when built shared) beside them."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(root / "bin"), env.get("LD_LIBRARY_PATH")) if p)
    return env


def adapter_gguf(name: str, path: Path, base: Path | None = None) -> Path:
    """A GGUF LoRA for `path` served as `name`: a peft folder converted once (f16, cached by content), or a
    GGUF LoRA file linked as NAME-DIGEST.gguf (llama-server names an adapter by its file only)."""
    if path.is_file() and path.suffix == ".gguf":
        stat = path.resolve().stat()
        key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        link = cache_dir() / "llamacpp" / "lora" / f"{name}-{hashlib.sha256(key).hexdigest()[:16]}.gguf"
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        return link
    weights = path / "adapter_model.safetensors"
    if not weights.is_file() or not (path / "adapter_config.json").is_file():
        raise LlamaCppError(f"{path} is neither a GGUF LoRA file nor a peft adapter folder")
    digest = hashlib.sha256(weights.read_bytes() + (path / "adapter_config.json").read_bytes()).hexdigest()[:16]
    out = cache_dir() / "llamacpp" / "lora" / f"{name}-{digest}.gguf"
    if out.is_file():
        return out
    args = [str(path), "--base", str(base or default_model_dir()), "--outtype", "f16"]
    return _convert("convert_lora_to_gguf.py", args, out, f"converting {path} to a GGUF LoRA")


def convert_adapters(adapters: dict[str, Path]) -> dict[str, Path]:
    """Every adapter as a GGUF LoRA (`adapter_gguf`), the ones not yet converted one per core at a time (each
    conversion is a Python process, mostly importing torch). Measured on the idle 2-core EPYC, the four shipped
    adapters: 25.3 s one after the other, 17.9 s this way."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(len(adapters), os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(adapter_gguf, name, path) for name, path in adapters.items()}
        return {name: future.result() for name, future in futures.items()}


def quantize(source: Path, kind: str, out: Path) -> Path:
    """`source` GGUF re-quantised to `kind` (Q8_0, Q4_K_M, ...) with llama-quantize; kept when present."""
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")  # two starts at once do not share a file
    tool = ensure_llama_cpp() / "bin" / "llama-quantize"
    result = subprocess.run(
        [str(tool), "--allow-requantize", str(source), str(partial), kind],
        capture_output=True,
        env=tool_env(tool.parent.parent),
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LlamaCppError(f"llama-quantize {kind} failed: {result.stderr[-1000:].decode(errors='replace')}")
    partial.rename(out)
    return out


def convert_hf(model_dir: Path, outtype: str, out: Path) -> Path:
    """A Hugging Face folder as GGUF (`f16`, `bf16`, `q8_0`, `f32`) with llama.cpp's converter; kept when present."""
    if out.is_file():
        return out
    return _convert("convert_hf_to_gguf.py", [str(model_dir), "--outtype", outtype], out, f"converting {model_dir}")


def _convert(script: str, args: list[str], out: Path, what: str) -> Path:
    """Run one of llama.cpp's converters (with its vendored gguf-py) into `out`, atomically."""
    root = ensure_llama_cpp()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    env = {**offline_env(), "PYTHONPATH": str(root / "gguf-py")}
    command = [sys.executable, str(root / script), *args, "--outfile", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LlamaCppError(f"{what} failed:\n{result.stderr[-2000:]}")
    partial.rename(out)
    return out


class LlamaCppProcess(ManagedServer):
    """One llama-server, identified by its port; pid and log in the cache's run folder."""

    label = "llama.cpp"

    def __init__(self, cfg: LlamaCppServer, config_dir: Path | None = None) -> None:
        super().__init__(cfg.host, cfg.port, cfg.startup_timeout_s)
        self.cfg = cfg
        self.config_dir = config_dir or Path.cwd()

    def error(self, message: str) -> ServerError:
        return LlamaCppError(message)

    def source_model(self) -> Path:
        """The GGUF as configured (`model`; the packaged Q4_1 by default)."""
        return Path(os.path.expanduser(self.cfg.model)) if self.cfg.model else packaged_gguf()

    def model_path(self) -> Path:
        """The GGUF served: the source, or its `quant` conversion in the cache (named by the source's path, size
        and modification time, so an edited source converts again)."""
        source = self.source_model()
        if self.cfg.quant is None:
            return source
        try:
            stat = source.stat()
        except OSError:
            return source  # start() reports the missing file
        key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return cache_dir() / "llamacpp" / "models" / f"{source.stem}-{key}.{self.cfg.quant}.gguf"

    def threads(self) -> int:
        if self.cfg.threads:
            return self.cfg.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def adapters(self) -> tuple[dict[str, Path], list[str]]:
        """Adapters to serve that exist, as {name: folder or file} (the configured ones, then those added by
        `load-adapter`), and the names whose path is missing."""
        present: dict[str, Path] = {}
        missing: list[str] = []
        for name, raw in {**self.cfg.adapters, **self.loaded()}.items():
            path = Path(os.path.expandvars(os.path.expanduser(raw)))
            path = (path if path.is_absolute() else self.config_dir / path).resolve()
            if path.is_file() or (path / "adapter_config.json").is_file():
                present[name] = path
            else:
                missing.append(name)
        return present, missing

    @property
    def loaded_file(self) -> Path:
        return self.pid_file.with_suffix(".adapters.json")

    def loaded(self) -> dict[str, str]:
        """Adapters added to this server by `load-adapter` ({name: absolute path}); forgotten by `down`."""
        try:
            raw = json.loads(self.loaded_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def _remember(self, loaded: dict[str, str]) -> None:
        partial = self.loaded_file.with_suffix(".partial")
        partial.write_text(json.dumps(loaded, indent=2))
        partial.replace(self.loaded_file)

    def load_adapter(self, name: str, path: Path, log: Callable[[str], None] = print) -> float:
        """Serve a new adapter as `name`; returns the seconds the server was away.

        llama-server reads LoRA files only when it starts, so the adapter is converted first (a broken one
        leaves the server as it was), then the server restarts with it: about a second for a small model,
        during which requests get connection errors (the service retries those). Kept until `down`; add it
        to llamacpp.adapters to keep it for good."""
        path = self.check_adapter(name, path)
        adapter_gguf(name, path)
        return self._restart_with({**self.loaded(), name: str(path)}, log)

    def check_adapter(self, name: str, path: Path) -> Path:
        """The adapter's resolved path, or LlamaCppError for what `load_adapter` would refuse: checked before
        the slow steps (preparing the base model, converting)."""
        if not name or "/" in name or name != name.strip():
            raise LlamaCppError(f"adapter name {name!r}: use a plain name such as receipt-v2")
        if name in self.cfg.adapters:
            raise LlamaCppError(f"{name!r} is configured in llamacpp.adapters; choose another name")
        if self.pid() is None or not self.healthy():
            raise LlamaCppError(f"llama.cpp is not running at {self.url}; start it with `extraction llamacpp up`")
        path = path.expanduser().resolve()
        if not (path.is_file() and path.suffix == ".gguf") and not (path / "adapter_config.json").is_file():
            raise LlamaCppError(f"{path} is neither a GGUF LoRA file nor a peft adapter folder")
        return path

    def unload_adapter(self, name: str, log: Callable[[str], None] = print) -> float:
        """Stop serving an adapter added by `load-adapter` (a restart, as for loading)."""
        loaded = self.loaded()
        if name in self.cfg.adapters:
            raise LlamaCppError(f"{name!r} comes from llamacpp.adapters; remove it there and restart")
        if name not in loaded:
            raise LlamaCppError(f"no adapter {name!r} was loaded; loaded: {', '.join(sorted(loaded)) or 'none'}")
        if self.pid() is None:
            raise LlamaCppError(f"llama.cpp is not running at {self.url}")
        del loaded[name]
        return self._restart_with(loaded, log)

    def _restart_with(self, loaded: dict[str, str], log: Callable[[str], None]) -> float:
        """Restart with `loaded` as the added adapters; on failure, back to the adapters it had."""
        before = self.loaded()
        started = time.monotonic()
        self._remember(loaded)
        self.stop()
        try:
            self.start(log)
        except LlamaCppError:
            self._remember(before)
            self.start(log)
            raise
        return time.monotonic() - started

    def forget_loaded(self) -> None:
        self.loaded_file.unlink(missing_ok=True)

    def command(self, server: Path, loras: dict[str, Path]) -> list[str]:
        cfg = self.cfg
        cmd = [
            str(server), "--model", str(self.model_path()), "--host", cfg.host, "--port", str(cfg.port),
            "--ctx-size", str(cfg.ctx_size * cfg.parallel), "--parallel", str(cfg.parallel),
            "--threads", str(self.threads()), "--threads-batch", str(self.threads()), "--no-webui",
            "--metrics", "--jinja",
        ]  # fmt: skip
        if not cfg.cache_prompt:
            cmd += ["--no-cache-prompt"]
        for path in loras.values():
            cmd += ["--lora", str(path)]
        if loras:
            # not applied until asked; every request sends every adapter's scale (backends/openai_compat.py)
            cmd += ["--lora-init-without-apply"]
        return cmd + list(cfg.extra_args)

    def start(self, log: Callable[[str], None] = print) -> int:
        if (pid := self.running_already(log)) is not None:
            return pid
        source = self.source_model()
        if not source.is_file():
            raise LlamaCppError(f"no GGUF model at {source}")
        present, missing = self.adapters()
        for name in missing:
            log(f"adapter {name!r} not found: not served by llama.cpp until it exists")
        root = ensure_llama_cpp(log)
        model = self.model_path()
        if not model.is_file():
            log(f"re-quantising {source.name} to {self.cfg.quant} (once, cached: {model})")
            quantize(source, str(self.cfg.quant), model)
        loras = convert_adapters(present)
        pid, seconds = self.launch(self.command(root / "bin" / "llama-server", loras), tool_env(root))
        log(f"llama.cpp ready at {self.url} in {seconds:.1f} s (pid {pid}, {model.name}, log {self.log_file})")
        return pid

    def lora_ids(self) -> dict[str, int]:
        """Adapter name -> llama-server's id, from GET /lora-adapters (files are named NAME-DIGEST.gguf)."""
        response = httpx.get(f"{self.url}/lora-adapters", timeout=5)
        response.raise_for_status()
        return llamacpp_lora_ids(response.json())

    def status(self) -> dict[str, Any]:
        healthy = self.healthy()
        return {
            "url": self.url,
            "pid": self.pid(),
            "healthy": healthy,
            "model": str(self.model_path()),
            "quant": self.cfg.quant or "as the file is",
            "adapters": sorted(self.lora_ids()) if healthy else [],
            "loaded_at_run_time": self.loaded(),
            "log": str(self.log_file),
            "build": str(home()),
            "cpu": read_cpu().as_dict(),
        }
