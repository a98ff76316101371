"""Build llama.cpp's `llama-server` and `llama-quantize` for this CPU, once, from the llama-cpp-python sdist.

Standard library only, so a fresh machine can start the build before the project's venv exists:
`make local-stack` runs `python3 backends/local/llamacpp_build.py --early` at once, beside the venv's installs
(the engine install that follows waits on its lock and uses its build, or stops it when the engine chosen is not
llama.cpp). The rest of the project uses it as `backends.local.llamacpp_build` (re-exported by
`backends.local.llamacpp`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

if __package__:
    from backends.local.base_model import cache_dir
    from backends.local.hardware import detect_device, read_cpu, usable_cores
else:  # run by path (`--early`) with any Python: the two stdlib-only siblings, without the package's imports
    from base_model import cache_dir  # type: ignore[no-redef]
    from hardware import detect_device, read_cpu, usable_cores  # type: ignore[no-redef]

try:
    from backends.local.process import ServerError as _Base
except ImportError:  # by path, with no httpx: what kind of error it is matters only to the project's CLI
    _Base = Exception  # type: ignore[assignment,misc]

SOURCE = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp (tools/server, quantize, conversion scripts)
TARGETS = ("llama-server", "llama-quantize")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_WEBUI=OFF",
)  # fmt: skip
FASTBUILD = Path(__file__).with_name("llamacpp_fastbuild.cmake")  # lower -O for the layers off the hot path
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "service" / "default_config.yaml"
BUILD_CPU_SECONDS = 667  # the fast build, measured on the 2-core AVX2 EPYC (2026-12-02): 5.8 min wall there alone
FIRST_RUN_BUILD_MINUTES = 6.0  # what a first `make demo` can spend on it and still show its table in 10 min


def build_minutes(cores: int) -> float:
    """The build's wall time on `cores` alone, from its measured CPU-seconds."""
    return BUILD_CPU_SECONDS / max(1, cores) / 60


def fits_first_run(cores: int) -> bool:
    """Whether building llama.cpp fits a fresh machine's first run on `cores` (engine.choose_engine's rule)."""
    return build_minutes(cores) <= FIRST_RUN_BUILD_MINUTES


def full_opt() -> bool:
    """EXTRACTION_LLAMACPP_FULL_OPT=1: everything at Release -O3, as llama.cpp ships it (1,100 CPU-s instead of
    667 on the 2-core EPYC; 10.6 min instead of 5.8)."""
    return os.environ.get("EXTRACTION_LLAMACPP_FULL_OPT", "").strip().lower() in {"1", "true", "yes", "on"}


def cmake_flags() -> list[str]:
    """llama.cpp's cmake options here: a native static build of the server and the quantizer, and, unless
    `full_opt()`, the include that compiles the HTTP/CLI/template/multimodal layers at -O0 and libllama at -O1
    (ggml's kernels keep Release -O3), those layers as unity builds. Measured on the 2-core AVX2 EPYC: the same
    answers token for token, no slower (README, llama.cpp beside vLLM); 1,100 -> 778 CPU-seconds (2026-12-01,
    the -O levels), 876 -> 667 (2026-12-02, user + system, the unity builds). Needs cmake 3.19 (older: left
    out)."""
    return [*CMAKE_FLAGS] if full_opt() else [*CMAKE_FLAGS, f"-DCMAKE_PROJECT_INCLUDE={FASTBUILD}"]


# Fixes applied to the vendored llama.cpp before it is built: (file under vendor/llama.cpp, text, replacement).
# Each must match exactly once (a new SOURCE that moved the text fails the build loudly, not silently unfixed).
AMX_TILE_CONFIG = (
    "ggml/src/ggml-cpu/amx/mmq.cpp",
    "    _tile_loadconfig(&tc);\n    done = true;",
    "    // extraction-service: make the stores above reach memory before ldtilecfg reads them. GCC 12 drops\n"
    "    // them (the intrinsic does not tell it the config is read), ldtilecfg then loads stack garbage and\n"
    "    // faults (#GP: llama-server died with SIGSEGV at its first matmul on an AMX Xeon; llama.cpp #20824,\n"
    "    // fix proposed in #26954).\n"
    '    __asm__ __volatile__("" : : "r"(&tc) : "memory");\n'
    "    _tile_loadconfig(&tc);\n    done = true;",
)
PATCHES = (AMX_TILE_CONFIG,)


class LlamaCppError(_Base):
    """llama.cpp cannot be built, started or driven; the message says why and what to do."""


def patch_source(src: Path) -> None:
    """Apply PATCHES to the llama.cpp tree at `src` (vendor/llama.cpp of the sdist)."""
    for relative, text, replacement in PATCHES:
        path = src / relative
        code = path.read_text(encoding="utf-8")
        if replacement in code:
            continue  # applied already
        if code.count(text) != 1:
            raise LlamaCppError(f"{SOURCE}: the fix for {relative} no longer applies ({code.count(text)} matches)")
        path.write_text(code.replace(text, replacement), encoding="utf-8")


def build_key() -> str:
    """The cache key of a build: the source, its fixes and the CPU features a native build compiles for (a
    new fix rebuilds every cached build once)."""
    cpu = read_cpu()
    recipe = " ".join(sorted(cpu.flags)) + "".join(f"\n{relative}:{new}" for relative, _, new in PATCHES)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
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
    (5.8 minutes on 2 cores), then reused on any machine with the same CPU flags. One build at a time per
    cache: a second caller waits for the first and uses its build."""
    import fcntl

    root = home()  # one read of the CPU's flags
    if is_built(root):
        return root
    if missing := toolchain_missing():
        raise LlamaCppError(f"building llama.cpp needs {' and '.join(missing)} (apt-get install cmake g++)")
    root.parent.mkdir(parents=True, exist_ok=True)
    failed = root.parent / f"{root.name}.failed"
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        waited_from: float | None = None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited_from = time.time()
            log(f"another process is building llama.cpp into {root}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(root):  # built by the process we waited for
            return root
        if waited_from is not None and failed.is_file() and failed.stat().st_mtime >= waited_from:
            raise LlamaCppError(f"the build this waited for failed: {failed.read_text().strip()}")  # same again
        try:
            built = _build(root, log, jobs)
        except LlamaCppError as e:
            failed.write_text(str(e))
            raise
        failed.unlink(missing_ok=True)
        return built


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
    patch_source(src)
    build = src / "build"
    steps = [
        ["cmake", "-S", str(src), "-B", str(build), *generator(), *cmake_flags()],
        ["cmake", "--build", str(build), "--target", *TARGETS, "-j", str(jobs or usable_cores())],
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
    with urllib.request.urlopen(urllib.request.Request(page, headers={"Accept": accept}), timeout=60) as response:
        kind = response.headers.get("content-type", "")
        body = response.read().decode(response.headers.get_content_charset() or "utf-8")
        page = response.geturl()  # after redirects: what relative links are relative to
    if kind.startswith("application/vnd.pypi.simple.v1+json"):
        for file in json.loads(body).get("files", []):
            if file.get("filename") == filename:
                return urllib.parse.urljoin(page, str(file["url"])), (file.get("hashes") or {}).get("sha256")
    else:
        for href in re.findall(r'href="([^"]+)"', body):
            link = href.replace("&amp;", "&")
            if link.split("#")[0].rsplit("/", 1)[-1] == filename:
                digest = re.search(r"sha256=([0-9a-f]{64})", link)
                return urllib.parse.urljoin(page, link.split("#")[0]), digest.group(1) if digest else None
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
        with urllib.request.urlopen(url, timeout=120) as response, out.open("wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
    except (OSError, ValueError, KeyError, LlamaCppError) as exc:  # URLError and HTTPError are OSErrors
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
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as process:  # its own group: stopping it stops the compilers cmake's build tool started too
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
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
            raise
    return process.returncode


def _signal_group(process: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        process.send_signal(sig)


def configured_engine(environ: Mapping[str, str]) -> tuple[str, str]:
    """(local_engine, where it was set): EXTRACTION_LOCAL_ENGINE, else the `local_engine:` line of the config
    file (EXTRACTION_CONFIG or the embedded default), read by a pattern (no YAML parser before the venv), else
    auto. Only a guess for the early build: the engine install reads the config for real."""
    if value := environ.get("EXTRACTION_LOCAL_ENGINE", "").strip().lower():
        return value, "EXTRACTION_LOCAL_ENGINE"
    path = Path(environ.get("EXTRACTION_CONFIG") or DEFAULT_CONFIG)
    try:
        found = re.search(r"^local_engine:\s*[\"']?(\w+)", path.read_text(errors="replace"), re.MULTILINE)
    except OSError:
        found = None
    return (found.group(1).lower(), f"local_engine in {path}") if found else ("auto", "default")


def early_build_wanted(environ: Mapping[str, str] | None = None) -> str | None:
    """Why `--early` would not build (None: it builds). It builds speculatively where llama.cpp is likely the
    engine: asked for, or `auto` on a CPU (no GPU) whose cores make the build fit a first run, not yet built
    here, with a toolchain; the engine install decides for real and stops a build it does not want."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    engine, where = configured_engine(env)
    if engine not in ("auto", "llamacpp"):
        return f"{where} is {engine}"
    if is_built():
        return "already built for this CPU"
    if missing := toolchain_missing():
        return f"no {' or '.join(missing)}"
    if engine == "auto":
        if detect_device() == "gpu":
            return "a GPU: vLLM serves there"
        if not fits_first_run(cores := usable_cores()):
            return f"~{build_minutes(cores):.0f} min on {cores} core(s) would not fit a first run (auto: vLLM-CPU)"
    return None


def stop_early_build(environ: Mapping[str, str] | None = None) -> bool:
    """SIGTERM to the early build `make local-stack` started (its pid in EXTRACTION_EARLY_BUILD_PID), for an
    engine install that chose vLLM; True when it was stopped. Only a process still running this module is
    signalled, never one that reused the number."""
    pid = (os.environ if environ is None else environ).get("EXTRACTION_EARLY_BUILD_PID", "").strip()
    if not pid.isdigit():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # finished (or not on Linux)
    if b"llamacpp_build" not in cmdline:
        return False
    os.kill(int(pid), signal.SIGTERM)
    return True


def main(argv: list[str] | None = None) -> int:
    """`python3 backends/local/llamacpp_build.py [--early]`: build (or, with --early, build only when
    `early_build_wanted`); SIGTERM stops the compile too."""
    args = sys.argv[1:] if argv is None else argv

    def log(line: str) -> None:  # marked: it runs beside pip's output
        sys.stdout.write(f"[llama.cpp] {line}\n")
        sys.stdout.flush()

    if "--early" in args and (why := early_build_wanted()):
        log(f"not building early: {why}")
        return 0

    def interrupt(signum: int, frame: object) -> None:  # as process.sigterm_interrupts (out of reach: httpx)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        log(f"ready: {ensure_llama_cpp(log=log)}")
    except KeyboardInterrupt:
        log("build stopped")
        return 130
    except LlamaCppError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
