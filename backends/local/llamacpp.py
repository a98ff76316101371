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
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from backends.local.base_model import cache_dir, default_model_dir, packaged_gguf
from backends.local.config import LlamaCppServer
from backends.local.hardware import read_cpu
from backends.local.process import ManagedServer, ServerError, offline_env
from backends.openai_compat import llamacpp_lora_ids

SOURCE = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp (tools/server, quantize, conversion scripts)
TARGETS = ("llama-server", "llama-quantize")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_WEBUI=OFF",
)  # fmt: skip
FASTBUILD = Path(__file__).with_name("llamacpp_fastbuild.cmake")  # lower -O for the layers off the hot path


def full_opt() -> bool:
    """EXTRACTION_LLAMACPP_FULL_OPT=1: everything at Release -O3, as llama.cpp ships it (1,100 CPU-s instead of
    778 on the 2-core EPYC; 10.6 min instead of 6.7)."""
    return os.environ.get("EXTRACTION_LLAMACPP_FULL_OPT", "").strip().lower() in {"1", "true", "yes", "on"}


def cmake_flags() -> list[str]:
    """llama.cpp's cmake options here: a native static build of the server and the quantizer, and, unless
    `full_opt()`, the include that compiles the HTTP/CLI/template/multimodal layers at -O0 and libllama at -O1
    (ggml's kernels keep Release -O3). Measured on the 2-core AVX2 EPYC: the same answers token for token, no
    slower (README, llama.cpp beside vLLM), 1,100 -> 778 CPU-seconds. Needs cmake 3.19 (older: left out)."""
    return [*CMAKE_FLAGS] if full_opt() else [*CMAKE_FLAGS, f"-DCMAKE_PROJECT_INCLUDE={FASTBUILD}"]


class LlamaCppError(ServerError):
    """llama.cpp cannot be built, started or driven; the message says why and what to do."""


def build_key() -> str:
    """The cache key of a build: the source and the CPU features a native build compiles for."""
    cpu = read_cpu()
    digest = hashlib.sha256(" ".join(sorted(cpu.flags)).encode()).hexdigest()[:12]
    return f"{SOURCE.split('==')[1]}-{cpu.arch}-{digest}" + ("-fullopt" if full_opt() else "")


def home() -> Path:
    return cache_dir() / "llamacpp" / build_key()


def binary(name: str = "llama-server") -> Path:
    return home() / "bin" / name


def is_built(root: Path | None = None) -> bool:
    """Whether llama-server is built for this CPU (in the cache), so starting it takes seconds, not a build."""
    root = root or home()
    return (root / ".extraction-built").is_file() and all((root / "bin" / t).is_file() for t in TARGETS)


def toolchain_missing() -> list[str]:
    """What building llama.cpp here lacks (cmake, a C++ compiler); empty when it can be built."""
    compilers = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    missing = [] if shutil.which("cmake") else ["cmake"]
    return missing + ([] if any(c and shutil.which(c) for c in compilers) else ["C++ compiler"])


def ensure_llama_cpp(log: Callable[[str], None] = print, jobs: int | None = None) -> Path:
    """The folder with `bin/llama-server`, `bin/llama-quantize` and the conversion scripts; built on first use
    (6.7 minutes on 2 cores), then reused on any machine with the same CPU flags. One build at a time per
    cache: a second caller waits for the first and uses its build."""
    import fcntl

    root = home()  # one read of the CPU's flags
    if is_built(root):
        return root
    if missing := toolchain_missing():
        raise LlamaCppError(f"building llama.cpp needs {' and '.join(missing)} (apt-get install cmake g++)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is building llama.cpp into {root}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(root):  # built by the process we waited for
            return root
        return _build(root, log, jobs)


def _build(root: Path, log: Callable[[str], None], jobs: int | None) -> Path:
    marker = root / ".extraction-built"
    started = time.monotonic()
    work = root.parent / f"{root.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log(f"building llama.cpp from {SOURCE} (sdist) for this CPU into {root} (once; many minutes on few cores)")
    sdist = download_sdist(work, log)
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = next(work.glob("llama_cpp_python-*")) / "vendor" / "llama.cpp"
    build = src / "build"
    steps = [
        ["cmake", "-S", str(src), "-B", str(build), *generator(), *cmake_flags()],
        ["cmake", "--build", str(build), "--target", *TARGETS, "-j", str(jobs or os.cpu_count() or 1)],
    ]
    with (work / "build.log").open("w") as out:
        for step in steps:
            if run_logged(step, out, log) != 0:
                raise LlamaCppError(f"building llama.cpp failed at: {' '.join(step)}; see {work / 'build.log'}")
    shutil.rmtree(root, ignore_errors=True)
    (root / "bin").mkdir(parents=True)
    for target in TARGETS:
        shutil.copy2(build / "bin" / target, root / "bin" / target)
    for lib in (build / "bin").glob("*.so*"):  # a shared build (BUILD_SHARED_LIBS=ON in extra flags)
        shutil.copy2(lib, root / "bin" / lib.name, follow_symlinks=False)
    for part in ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "conversion", "gguf-py"):
        copy = shutil.copytree if (src / part).is_dir() else shutil.copy2
        copy(src / part, root / part)
    shutil.copy2(work / "build.log", root / "build.log")
    seconds = time.monotonic() - started
    built = {"source": SOURCE, "seconds": round(seconds), "opt": "full" if full_opt() else "fast"}
    marker.write_text(json.dumps({**built, "cpu": read_cpu().as_dict()}))
    shutil.rmtree(work, ignore_errors=True)
    log(f"llama.cpp built in {seconds / 60:.1f} min: {root / 'bin'}")
    return root


def index_url() -> str:
    """The package index pip uses here: PIP_INDEX_URL, pip's configured index-url, else PyPI."""
    if url := os.environ.get("PIP_INDEX_URL"):
        return url
    found = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           capture_output=True, text=True)  # fmt: skip
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else "https://pypi.org/simple"


def sdist_link(index: str, project: str, filename: str) -> tuple[str, str | None]:
    """(url, sha256) of `filename` on the index's simple page of `project` (PEP 691 JSON, or PEP 503 HTML)."""
    page = f"{index.rstrip('/')}/{project}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    response = httpx.get(page, headers={"Accept": accept}, timeout=60, follow_redirects=True)
    response.raise_for_status()
    if response.headers.get("content-type", "").startswith("application/vnd.pypi.simple.v1+json"):
        for file in response.json().get("files", []):
            if file.get("filename") == filename:
                return str(file["url"]), (file.get("hashes") or {}).get("sha256")
    else:
        for href in re.findall(r'href="([^"]+)"', response.text):
            link = href.replace("&amp;", "&")
            if link.split("#")[0].rsplit("/", 1)[-1] == filename:
                digest = re.search(r"sha256=([0-9a-f]{64})", link)
                return str(httpx.URL(page).join(link.split("#")[0])), digest.group(1) if digest else None
    raise LlamaCppError(f"{filename} is not on {page}")


def download_sdist(work: Path, log: Callable[[str], None] = print) -> Path:
    """The llama-cpp-python sdist in `work`, fetched from the index's simple page and checked against its
    sha256. Not `pip download`: pip prepares an sdist's metadata first, which builds its build backend and that
    backend's dependencies from source under `--no-binary` (8.0 min on the 2-core EPYC with no pip cache)."""
    name, version = SOURCE.split("==")
    filename = f"{name.replace('-', '_')}-{version}.tar.gz"
    started = time.monotonic()
    try:
        url, sha256 = sdist_link(index_url(), name, filename)
        out = work / filename
        digest = hashlib.sha256()
        with httpx.stream("GET", url, timeout=120, follow_redirects=True) as response, out.open("wb") as f:
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                f.write(chunk)
                digest.update(chunk)
    except (httpx.HTTPError, OSError, ValueError, KeyError, LlamaCppError) as exc:
        log(f"the index's simple page did not give {filename} ({exc}); asking pip (slower: it prepares metadata)")
        return pip_download(work)
    if sha256 and digest.hexdigest() != sha256:
        out.unlink(missing_ok=True)
        raise LlamaCppError(f"{filename}: sha256 {digest.hexdigest()} is not the index's {sha256}")
    log(f"{filename}: {out.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - started:.1f} s")
    return out


def pip_download(work: Path) -> Path:
    """The sdist through `pip download`, which follows every pip setting (find-links, file:// indexes)."""
    for stale in work.glob("*.tar.gz"):
        stale.unlink()
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", SOURCE]
    if subprocess.run([*pip, "-d", str(work)]).returncode != 0:
        raise LlamaCppError(f"could not download the {SOURCE} sdist from the package index")
    sdists = list(work.glob("*.tar.gz"))
    if len(sdists) != 1:
        raise LlamaCppError(f"expected one {SOURCE} sdist in {work}, found {len(sdists)}")
    return sdists[0]


def generator() -> list[str]:
    """Ninja when there is one (the `ninja` wheel beside this Python, or on PATH), else cmake's default (make).
    Measured on the 2-core AVX2 EPYC: ninja kept both cores busy for the whole build (1,100 CPU-s in 551 s;
    its `.ninja_log` shows 2.00 steps at a time throughout)."""
    beside = Path(sys.executable).parent / "ninja"
    found = str(beside) if beside.is_file() else shutil.which("ninja")
    return ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={found}"] if found else []


def run_logged(command: list[str], out: IO[str], log: Callable[[str], None]) -> int:
    """Run `command` with its output in `out`, reporting the build's progress every 10 points (make's `[ NN%]`,
    ninja's `[N/M]`)."""
    shown = -10
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                out.write(line)
                if m := re.match(r"\[\s*(\d+)%\]", line):
                    percent = int(m.group(1))
                elif (m := re.match(r"\[(\d+)/(\d+)\]", line)) and int(m.group(2)):
                    percent = 100 * int(m.group(1)) // int(m.group(2))
                else:
                    continue
                if percent >= shown + 10:
                    shown = percent // 10 * 10
                    log(f"llama.cpp build {shown}%")
        except BaseException:  # interrupted (Ctrl-C, or SIGTERM turned into one): the compile stops with us
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    return process.returncode


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
        if not name or "/" in name or name != name.strip():
            raise LlamaCppError(f"adapter name {name!r}: use a plain name such as receipt-v2")
        if name in self.cfg.adapters:
            raise LlamaCppError(f"{name!r} is configured in llamacpp.adapters; choose another name")
        if self.pid() is None or not self.healthy():
            raise LlamaCppError(f"llama.cpp is not running at {self.url}; start it with `extraction llamacpp up`")
        path = path.expanduser().resolve()
        if not (path.is_file() and path.suffix == ".gguf") and not (path / "adapter_config.json").is_file():
            raise LlamaCppError(f"{path} is neither a GGUF LoRA file nor a peft adapter folder")
        adapter_gguf(name, path)
        return self._restart_with({**self.loaded(), name: str(path)}, log)

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
            cmd += ["--lora-init-without-apply"]  # base model unless a request names an adapter
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
