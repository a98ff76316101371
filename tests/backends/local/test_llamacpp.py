"""llama.cpp as a local engine: the llama-server command, adapters by name, the build cache key, and the
client selecting an adapter per request (real loopback HTTP against a stand-in that speaks llama-server's
/lora-adapters and /v1/chat/completions)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backends import BackendRequest, Endpoint
from backends.local import llamacpp
from backends.local import llamacpp_build as llbuild
from backends.local.config import LlamaCppServer
from backends.local.hardware import CpuInfo
from backends.local.llamacpp import LlamaCppProcess
from backends.local.llamacpp_build import build_key
from backends.openai_compat import OpenAIBackend, llamacpp_lora_ids
from backends.profiles import default_dialect, dialect_gaps
from loadtest.mock_upstream import ServerThread
from service.config import BackendConfig
from tests.conftest import free_port


def test_command_serves_the_gguf_with_slots_adapters_off_by_default_and_the_prompt_cache(tmp_path: Path) -> None:
    cfg = LlamaCppServer(model=str(tmp_path / "m.gguf"), port=8123, ctx_size=1024, parallel=3, threads=2)
    loras = {"receipt-lora": tmp_path / "receipt-lora-0123456789abcdef.gguf"}
    cmd = LlamaCppProcess(cfg, tmp_path).command(Path("/bin/llama-server"), loras)
    joined = " ".join(cmd)
    assert cmd[0] == "/bin/llama-server" and f"--model {tmp_path / 'm.gguf'}" in joined
    assert "--host 127.0.0.1 --port 8123" in joined
    assert "--ctx-size 3072 --parallel 3" in joined  # the context is shared by the slots
    assert f"--lora {loras['receipt-lora']}" in joined and "--lora-init-without-apply" in cmd
    assert "--no-cache-prompt" not in cmd
    off = LlamaCppProcess(LlamaCppServer(cache_prompt=False), tmp_path).command(Path("s"), {})
    assert "--no-cache-prompt" in off and "--lora-init-without-apply" not in off


def test_adapters_split_into_present_and_missing_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    cfg = LlamaCppServer(adapters={"a": "a", "b": str(tmp_path / "b.gguf"), "c": "nowhere"})
    present, missing = LlamaCppProcess(cfg, tmp_path).adapters()
    assert present == {"a": (tmp_path / "a").resolve(), "b": (tmp_path / "b.gguf").resolve()}
    assert missing == ["c"]


def test_a_gguf_lora_file_is_served_under_its_configured_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "whatever.gguf").write_bytes(b"GGUF")
    link = llamacpp.adapter_gguf("receipt-v2", tmp_path / "whatever.gguf")
    assert link.resolve() == (tmp_path / "whatever.gguf").resolve()
    listing = [{"id": 0, "path": str(link), "scale": 0.0}]
    assert llamacpp_lora_ids(listing) == {"receipt-v2": 0}  # the name, not the file's stem
    assert llamacpp.adapter_gguf("receipt-v2", tmp_path / "whatever.gguf") == link


def test_adapters_loaded_at_run_time_join_the_configured_ones_until_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    server = LlamaCppProcess(LlamaCppServer(port=8124, adapters={"a": str(tmp_path / "a.gguf")}), tmp_path)
    server.loaded_file.parent.mkdir(parents=True)
    server._remember({"b": str(tmp_path / "b.gguf")})
    present, _ = server.adapters()
    assert list(present) == ["a", "b"]  # configured first: their ids do not move when others come and go
    server.forget_loaded()
    assert list(server.adapters()[0]) == ["a"]


def test_load_adapter_refuses_clearly_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    server = LlamaCppProcess(LlamaCppServer(port=free_port(), adapters={"a": str(tmp_path / "a.gguf")}), tmp_path)
    with pytest.raises(llbuild.LlamaCppError, match="configured in llamacpp.adapters"):
        server.load_adapter("a", tmp_path / "a.gguf")
    with pytest.raises(llbuild.LlamaCppError, match="plain name"):
        server.load_adapter("x/y", tmp_path / "a.gguf")
    with pytest.raises(llbuild.LlamaCppError, match="not running"):
        server.load_adapter("new", tmp_path / "a.gguf")
    with pytest.raises(llbuild.LlamaCppError, match="no adapter 'new' was loaded"):
        server.unload_adapter("new")
    assert server.loaded() == {}


def test_a_native_build_is_cached_per_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    def cpu(flags: str) -> CpuInfo:
        return CpuInfo(model="x", flags=frozenset(flags.split()), arch="x86_64", cores=2)

    monkeypatch.setattr(llbuild, "read_cpu", lambda: cpu("avx2 fma"))
    avx2 = build_key()
    monkeypatch.setattr(llbuild, "read_cpu", lambda: cpu("avx2 fma avx512f amx_tile"))
    assert build_key() != avx2 and build_key().startswith("0.3.36-x86_64-")


def test_the_amx_tile_config_fix_applies_once_and_is_part_of_the_cache_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relative, text, _ = llbuild.AMX_TILE_CONFIG
    mmq = tmp_path / relative
    mmq.parent.mkdir(parents=True)
    mmq.write_text(f"inline void ggml_tile_config_init(void) {{\n    tc.palette_id = 1;\n{text}\n}}\n")
    llbuild.patch_source(tmp_path)
    patched = mmq.read_text()
    barrier = patched.index('__asm__ __volatile__("" : : "r"(&tc) : "memory");')
    assert barrier < patched.index("_tile_loadconfig(&tc);") and patched.count("_tile_loadconfig") == 1
    llbuild.patch_source(tmp_path)
    assert mmq.read_text() == patched  # applied once, whatever the number of calls
    mmq.write_text("inline void ggml_tile_config_init(void) {}\n")  # a llama.cpp that moved the text
    with pytest.raises(llbuild.LlamaCppError, match="no longer applies"):
        llbuild.patch_source(tmp_path)  # loud, not silently unfixed
    keyed = build_key()
    monkeypatch.setattr(llbuild, "PATCHES", ())
    assert build_key() != keyed  # a build made before the fix is not reused


def test_a_file_that_is_no_adapter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(llamacpp.LlamaCppError, match="neither a GGUF LoRA file nor a peft adapter folder"):
        llamacpp.adapter_gguf("x", tmp_path)


def test_lora_ids_name_adapters_by_file_stem_without_the_digest() -> None:
    listing = [
        {"id": 0, "path": "/c/lora/receipt-lora-0123456789abcdef.gguf", "scale": 0.0},
        {"id": 1, "path": "/x/my-own.gguf", "scale": 0.0},
    ]
    assert llamacpp_lora_ids(listing) == {"receipt-lora": 0, "my-own": 1}


def test_llamacpp_kind_defaults_local_engine_policy() -> None:
    cfg = BackendConfig(name="l", kind="llamacpp", model="smollm2-135m")
    assert cfg.retry_timeouts is False and cfg.schema_dialect == "llamacpp"
    assert cfg.structured_limits.probe_budget(cfg.kind) == 10.0
    assert default_dialect("llamacpp") == "llamacpp"
    assert dialect_gaps({"type": "string", "format": "email"}, "llamacpp") == ["/: format 'email'"]
    assert dialect_gaps({"type": "string", "format": "date"}, "llamacpp") == []


class LlamaServerStandIn:
    """Speaks the two llama-server routes the client uses; records the chat bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.adapters = [{"id": 0, "path": "/c/receipt-lora-0123456789abcdef.gguf", "scale": 0.0}]
        self.listings = 0

    async def lora(self, request: Request) -> JSONResponse:
        self.listings += 1
        return JSONResponse(self.adapters)

    async def chat(self, request: Request) -> JSONResponse:
        self.bodies.append(json.loads(await request.body()))
        return JSONResponse({
            "choices": [{"message": {"content": '{"a": "x"}'}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 5}},
        })  # fmt: skip

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/lora-adapters", self.lora), Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ])  # fmt: skip


async def test_the_client_applies_the_named_adapter_per_request_and_the_base_otherwise_every_scale_sent() -> None:
    stand_in = LlamaServerStandIn()
    request = BackendRequest(messages=[{"role": "user", "content": "hi"}], schema={"type": "object"})
    with ServerThread(stand_in.app()) as server:
        tuned = OpenAIBackend(Endpoint(name="t", kind="llamacpp", base_url=f"{server.url}/v1", model="receipt-lora"))
        base = OpenAIBackend(Endpoint(name="b", kind="llamacpp", base_url=f"{server.url}/v1", model="smollm2-135m"))
        try:
            answers = [await tuned.complete(request)]
            # a restart by `load-adapter` renumbers the adapters: the next request follows the new id
            stand_in.adapters = [{"id": 0, "path": "/c/new-one-fedcba9876543210.gguf", "scale": 0.0},
                                 {"id": 1, "path": "/c/receipt-lora-0123456789abcdef.gguf", "scale": 0.0}]  # fmt: skip
            answers.append(await tuned.complete(request))
            await base.complete(request)
            await tuned.complete(BackendRequest(messages=request.messages, repetition_penalty=1.1))
        finally:
            await tuned.aclose()
            await base.aclose()
    # every loaded adapter's scale, the others' 0: a server's own scales are 1 for each loaded adapter
    assert [b["lora"] for b in stand_in.bodies] == [
        [{"id": 0, "scale": 1.0}],
        [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}],
        [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}],  # the base model: none applied
        [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}],
    ]
    assert stand_in.bodies[-1]["repeat_penalty"] == 1.1  # llama.cpp's name for it
    assert not any("repeat_penalty" in b or "repetition_penalty" in b for b in stand_in.bodies[:-1])
    assert all("cache_prompt" not in b and b["max_tokens"] == 512 for b in stand_in.bodies)  # the server's setting
    assert stand_in.bodies[0]["response_format"]["type"] == "json_schema"
    assert stand_in.listings == 4  # looked up per request, never kept
    assert answers[0].usage.cached_input_tokens == 5  # the prefix llama-server reused from its cache


def test_the_build_reports_cmake_progress_and_keeps_the_whole_log(tmp_path: Path) -> None:
    import io
    import sys

    script = "import sys\nfor p in (0, 3, 12, 47, 50, 100): print(f'[{p:3d}%] Building CXX object x{p}.o')\nsys.exit(3)"
    out = io.StringIO()
    shown: list[str] = []
    code = llbuild.run_logged([sys.executable, "-c", script], out, shown.append)
    assert code == 3  # the exit code is the command's
    assert shown == [f"llama.cpp build {p}%" for p in (0, 10, 40, 50, 100)]  # at most one line per 10 points
    assert out.getvalue().count("Building CXX object") == 6
    ninja = "for n in (1, 20, 21, 105, 210): print(f'[{n}/210] Building CXX object x{n}.o')"
    shown.clear()
    assert llbuild.run_logged([sys.executable, "-c", ninja], io.StringIO(), shown.append) == 0
    assert shown == [f"llama.cpp build {p}%" for p in (0, 10, 50, 100)]  # ninja counts steps, not percent


def test_an_interrupted_build_stops_the_compile_with_it(tmp_path: Path) -> None:
    """Ctrl-C (or make's SIGTERM, turned into one by the CLI) mid-build: the child is stopped, not orphaned."""
    import io
    import os
    import sys

    pid_file = tmp_path / "pid"
    # the build tool's own child (a compiler) stands in as a grandchild: stopped with the whole group
    script = (f"import os, subprocess, sys, time\n"
              f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
              "print('[1/210] Building CXX object a.o', flush=True)\ntime.sleep(600)")  # fmt: skip

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        llbuild.run_logged([sys.executable, "-c", script], io.StringIO(), interrupt)
    tool, compiler = (int(pid) for pid in pid_file.read_text().split())
    with pytest.raises(ProcessLookupError):  # terminated and reaped before run_logged returned
        os.kill(tool, 0)
    assert wait_gone(compiler), "the compiler the build tool started outlived the interrupt"


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    """Whether `pid` is gone (or a zombie, its parent gone) within the timeout; polled, as a process's end is."""
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_the_build_module_runs_with_a_bare_python(tmp_path: Path) -> None:
    """`make local-stack` starts the build before the venv exists: the module imports nothing but the standard
    library (-S: no site-packages, so no httpx or pydantic), and --early declines where vLLM is asked for."""
    import subprocess
    import sys

    env = {"PATH": os.environ["PATH"], "EXTRACTION_CACHE_DIR": str(tmp_path), "EXTRACTION_LOCAL_ENGINE": "vllm"}
    run = subprocess.run([sys.executable, "-S", str(Path(llbuild.__file__)), "--early"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == "[llama.cpp] not building early: EXTRACTION_LOCAL_ENGINE is vllm\n"


def test_an_early_build_is_declined_where_llamacpp_is_unlikely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    monkeypatch.setattr(llbuild, "toolchain_missing", lambda: [])
    monkeypatch.setattr(llbuild, "usable_cores", lambda: 2)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "nvidia-smi" else real_which(name))
    assert llbuild.early_build_wanted({}) is None  # a 2-core CPU box, a toolchain, nothing built: build early
    assert llbuild.early_build_wanted({"EXTRACTION_LOCAL_ENGINE": "VLLM "}) == "EXTRACTION_LOCAL_ENGINE is vllm"
    config = tmp_path / "config.yaml"
    config.write_text("default_backend: local-prompted\nlocal_engine: 'vllm'  # kept on vLLM\n")
    assert llbuild.early_build_wanted({"EXTRACTION_CONFIG": str(config)}) == f"local_engine in {config} is vllm"
    monkeypatch.setattr(llbuild, "usable_cores", lambda: 1)  # ~11 min: auto serves vLLM-CPU on a first run
    assert "would not fit a first run" in (llbuild.early_build_wanted({}) or "")
    assert llbuild.early_build_wanted({"EXTRACTION_LOCAL_ENGINE": "llamacpp"}) is None  # asked for: whatever cores
    monkeypatch.setattr(llbuild, "usable_cores", lambda: 2)
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200'\n")
    smi.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(smi) if name == "nvidia-smi" else real_which(name))
    assert llbuild.early_build_wanted({}) == "a GPU: vLLM serves there"
    monkeypatch.setattr(llbuild, "toolchain_missing", lambda: ["cmake"])
    assert llbuild.early_build_wanted({}) == "no cmake"
    root = llbuild.home()
    (root / "bin").mkdir(parents=True)
    for target in llbuild.TARGETS:
        (root / "bin" / target).write_text("")
    (root / ".extraction-built").write_text("{}")
    assert llbuild.early_build_wanted({}) == "already built for this CPU"
    assert llbuild.main(["--early"]) == 0


def test_a_build_that_failed_is_not_repeated_by_the_install_that_waited_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early build fails (a compile error, no index): the engine install waiting on its lock reports that
    failure at once instead of spending the same minutes on the same error."""
    import fcntl

    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(llbuild, "toolchain_missing", lambda: [])
    root = llbuild.home()
    root.parent.mkdir(parents=True)
    first = (root.parent / f"{root.name}.lock").open("w")  # the early build, mid-build
    fcntl.flock(first, fcntl.LOCK_EX)

    def early_build_fails(line: str) -> None:  # called once the install found the lock taken
        (root.parent / f"{root.name}.failed").write_text("building llama.cpp failed at: cmake --build ...")
        first.close()

    monkeypatch.setattr(llbuild, "_build", lambda *a: pytest.fail("built again after the same build failed"))
    with pytest.raises(llbuild.LlamaCppError, match="the build this waited for failed: building llama.cpp failed"):
        llbuild.ensure_llama_cpp(log=early_build_fails)

    def fails(*args: object) -> Path:
        raise llbuild.LlamaCppError("no index")

    monkeypatch.setattr(llbuild, "_build", fails)  # nobody else building: a new attempt, its failure recorded
    with pytest.raises(llbuild.LlamaCppError, match="no index"):
        llbuild.ensure_llama_cpp(log=lambda line: None)
    assert (root.parent / f"{root.name}.failed").read_text() == "no index"


def test_the_engine_install_stops_an_early_build_it_does_not_want() -> None:
    """vLLM chosen (config, cores): the early build's pid gets SIGTERM, and only if it still is that build."""
    import subprocess
    import sys

    sleeper = "import time; print('started', flush=True); time.sleep(600)"
    other = subprocess.Popen([sys.executable, "-c", sleeper], stdout=subprocess.PIPE)  # a process that is not the build
    early = subprocess.Popen([sys.executable, "-c", sleeper, "llamacpp_build.py", "--early"], stdout=subprocess.PIPE)
    for process in (other, early):  # running Python (its command line readable), as make's early build long is
        assert process.stdout is not None and process.stdout.readline() == b"started\n"
    try:
        assert not llbuild.stop_early_build({})  # no early build started
        assert not llbuild.stop_early_build({"EXTRACTION_EARLY_BUILD_PID": str(other.pid)})
        assert other.poll() is None  # a reused pid is left alone
        assert llbuild.stop_early_build({"EXTRACTION_EARLY_BUILD_PID": str(early.pid)})
        assert early.wait(timeout=10) == -15  # SIGTERM
    finally:
        for process in (other, early):
            process.kill()
            process.communicate()


def test_sigterm_interrupts_an_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from backends.local.process import sigterm_interrupts

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert sigterm_interrupts() == previous  # handed back, so the demo can put it back
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_quant_is_checked_and_names_its_conversion_by_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="llamacpp.quant must be one of Q4_0, .* not 'Q9_9'"):
        LlamaCppServer(quant="Q9_9")
    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF one")
    as_is = llamacpp.LlamaCppProcess(LlamaCppServer(model=str(source)))
    assert as_is.model_path() == source  # no quant: the file itself
    server = llamacpp.LlamaCppProcess(LlamaCppServer(model=str(source), quant="q8_0"))
    first = server.model_path()
    assert first.parent == tmp_path / "cache" / "llamacpp" / "models" and first.name.endswith(".Q8_0.gguf")
    assert server.model_path() == first  # stable while the source is unchanged
    source.write_bytes(b"GGUF two, edited")
    assert server.model_path() != first  # an edited source converts again
    other = llamacpp.LlamaCppProcess(LlamaCppServer(model=str(source), quant="F16"))
    assert other.model_path().name.endswith(".F16.gguf")


def test_the_build_uses_ninja_when_there_is_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import sys

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert llbuild.generator() == []  # no ninja anywhere: cmake's default generator
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/ninja" if name == "ninja" else None)
    assert llbuild.generator() == ["-G", "Ninja", "-DCMAKE_MAKE_PROGRAM=/usr/bin/ninja"]
    (tmp_path / "ninja").write_text("")  # the wheel's ninja beside this Python wins
    assert llbuild.generator() == ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={tmp_path / 'ninja'}"]


def index_app(files: dict[str, bytes], listed_sha: dict[str, str], html: bool) -> Starlette:
    """A package index's simple page for llama-cpp-python (PEP 691 JSON or PEP 503 HTML) and its files."""
    from starlette.responses import HTMLResponse, Response

    async def page(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        if html:
            links = "".join(f'<a href="{base}/files/{n}#sha256={listed_sha[n]}">{n}</a>' for n in files)
            return HTMLResponse(f"<html><body>{links}</body></html>")
        body = {"files": [{"filename": n, "url": f"{base}/files/{n}", "hashes": {"sha256": listed_sha[n]}}
                          for n in files]}  # fmt: skip
        return JSONResponse(body, media_type="application/vnd.pypi.simple.v1+json")

    async def file(request: Request) -> Response:
        return Response(files[request.path_params["name"]])

    return Starlette(routes=[Route("/simple/llama-cpp-python/", page), Route("/files/{name}", file)])


@pytest.mark.parametrize("html", [False, True])
def test_the_sdist_comes_from_the_index_page_checked_by_its_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, html: bool
) -> None:
    import hashlib

    name = "llama_cpp_python-" + llbuild.SOURCE.split("==")[1] + ".tar.gz"
    content = b"the sdist's bytes" * 1000
    good = {name: hashlib.sha256(content).hexdigest()}
    monkeypatch.setattr(llbuild, "pip_download", lambda work: pytest.fail("pip is the fallback, not the way"))
    with ServerThread(index_app({name: content}, good, html)) as index:
        monkeypatch.setenv("PIP_INDEX_URL", f"{index.url}/simple")
        got = llbuild.download_sdist(tmp_path, log=lambda line: None)
    assert got == tmp_path / name and got.read_bytes() == content
    got.unlink()
    with ServerThread(index_app({name: content}, {name: "0" * 64}, html)) as index:  # the bytes are not the listed ones
        monkeypatch.setenv("PIP_INDEX_URL", f"{index.url}/simple")
        with pytest.raises(llbuild.LlamaCppError, match="sha256 .* is not the index's 0000"):
            llbuild.download_sdist(tmp_path, log=lambda line: None)
    assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_an_index_without_the_sdist_falls_back_to_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fallback = tmp_path / "from-pip.tar.gz"
    monkeypatch.setattr(llbuild, "pip_download", lambda work: fallback)
    lines: list[str] = []
    with ServerThread(index_app({"other-1.0.tar.gz": b"x"}, {"other-1.0.tar.gz": "0" * 64}, html=False)) as index:
        monkeypatch.setenv("PIP_INDEX_URL", f"{index.url}/simple")
        assert llbuild.download_sdist(tmp_path, log=lines.append) == fallback
    assert "asking pip" in lines[0] and "is not on" in lines[0]


def test_the_fast_build_lowers_optimisation_off_the_hot_path_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The include file on a miniature of llama.cpp's targets, configured and compiled by the real cmake/c++:
    the HTTP/CLI layers at -O0 with precompiled standard headers, libllama at -O1, ggml untouched (-O3)."""
    import shutil
    import subprocess

    if not (shutil.which("cmake") and shutil.which("c++")):
        pytest.skip("cmake and a C++ compiler build llama.cpp; not on this machine")
    version = subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout.split()[2]
    if tuple(int(p) for p in version.split(".")[:2]) < (3, 19):
        pytest.skip(f"cmake {version}: the fast build needs 3.19 and is left out (a plain Release build)")
    monkeypatch.delenv("EXTRACTION_LLAMACPP_FULL_OPT", raising=False)
    src = tmp_path / "src"
    (src / "common").mkdir(parents=True)
    sources = {"common": "common/common.cpp", "json": "common/json.cpp", "arg": "common/arg.cpp",
               "server": "server.cpp", "llama": "llama.cpp", "ggml": "ggml.cpp"}  # fmt: skip
    for name, path in sources.items():
        body = f"int {name}_size() {{ return std::vector<int>(3).size(); }}"
        (src / path).write_text(f"#include <vector>\n{body}\n")
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.19)\nproject(llama.cpp CXX)\n"
        "add_library(llama-common STATIC common/common.cpp common/json.cpp common/arg.cpp)\n"
        "add_library(server-context STATIC server.cpp)\n"
        "add_library(llama STATIC llama.cpp)\nadd_library(ggml-cpu STATIC ggml.cpp)\n"
    )
    build = tmp_path / "build"
    flags = [f for f in llbuild.cmake_flags() if f.startswith(("-DCMAKE_BUILD_TYPE", "-DCMAKE_PROJECT_INCLUDE"))]
    assert f"-DCMAKE_PROJECT_INCLUDE={llbuild.FASTBUILD}" in flags and llbuild.FASTBUILD.is_file()
    configure = ["cmake", "-S", str(src), "-B", str(build), *flags, "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"]
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, capture_output=True)

    entries = json.loads((build / "compile_commands.json").read_text())
    commands: dict[str, str] = {}
    for entry in entries:  # a unity file stands for the sources it includes
        file = Path(entry["file"])
        if "Unity" in file.parts:
            for included in re.findall(r'#include "([^"]+)"', file.read_text()):
                commands[Path(included).stem] = "unity " + entry["command"]
        elif file.suffix == ".cpp":
            commands[file.stem] = entry["command"]

    def last_opt(command: str) -> str:
        return [part for part in command.split() if part.startswith("-O")][-1]

    assert {name: last_opt(commands[name]) for name in commands} == {
        "common": "-O0", "arg": "-O0", "json": "-O0", "server": "-O0", "llama": "-O1", "ggml": "-O3"}  # fmt: skip
    assert "cmake_pch" in commands["common"] and "cmake_pch" not in commands["ggml"]
    unity = {name for name, command in commands.items() if command.startswith("unity ")}
    assert unity == {"common", "arg", "server"}  # json.cpp alone (its specialisations break a unity build)


def test_full_optimisation_is_a_separate_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXTRACTION_LLAMACPP_FULL_OPT", raising=False)
    fast = build_key()
    assert any(f.startswith("-DCMAKE_PROJECT_INCLUDE=") for f in llbuild.cmake_flags())
    monkeypatch.setenv("EXTRACTION_LLAMACPP_FULL_OPT", "1")
    assert not any(f.startswith("-DCMAKE_PROJECT_INCLUDE=") for f in llbuild.cmake_flags())
    assert build_key() == f"{fast}-fullopt"  # never mistaken for the fast build in the cache


def test_a_second_build_waits_for_the_first_and_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two installs at once (make demo beside make llamacpp, two terminals): one builds, the other waits on the
    cache's lock and then takes that build instead of compiling into the same folder."""
    import fcntl

    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(llbuild, "toolchain_missing", lambda: [])
    monkeypatch.setattr(llbuild, "_build", lambda *a: pytest.fail("built a second time"))
    root = llbuild.home()
    root.parent.mkdir(parents=True)
    first = (root.parent / f"{root.name}.lock").open("w")  # the first install, mid-build
    fcntl.flock(first, fcntl.LOCK_EX)

    def first_build_finishes(line: str) -> None:  # called once the second install found the lock taken
        assert "another process is building llama.cpp" in line
        (root / "bin").mkdir(parents=True)
        for target in llbuild.TARGETS:
            (root / "bin" / target).write_text("")
        (root / ".extraction-built").write_text("{}")
        first.close()  # releases the lock

    assert llbuild.ensure_llama_cpp(log=first_build_finishes) == root
