"""The vLLM launcher's logic without starting vLLM (the real server is exercised in tests/vllm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from backends.local.config import VllmServer
from backends.local.hardware import detect_device
from backends.local.vllm import VllmError, VllmProcess, check_adapter, resolve_adapters


def adapter(folder: Path, **config: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA", **config}))
    return folder


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_command_serves_base_and_present_adapters_on_loopback(tmp_path: Path) -> None:
    adapter(tmp_path / "a")
    cfg = VllmServer(model="/models/base", port=8123, adapters={"a": "a", "gone": "missing"}, compact_json=True)
    present, missing = resolve_adapters(cfg, tmp_path)
    assert [a.name for a in present] == ["a"] and [a.name for a in missing] == ["gone"]
    cmd = VllmProcess(cfg, tmp_path).command(Path("/venv/bin/python"), present)
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    assert "--model /models/base" in joined and "--host 127.0.0.1" in joined and "--port 8123" in joined
    assert "--enable-lora" in cmd and "--max-lora-rank 16" in joined
    assert f"--lora-modules a={tmp_path / 'a'}" in joined
    assert '"disable_any_whitespace": true' in joined


def test_environment_allows_runtime_lora_and_stays_offline() -> None:
    env = VllmProcess(VllmServer(kv_cache_gib=3)).environment()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env.get("VLLM_CPU_KVCACHE_SPACE") == os.environ.get("VLLM_CPU_KVCACHE_SPACE", "3")


def test_compute_threads_bind_every_core_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 6, 7}, raising=False)
    assert VllmProcess(VllmServer()).environment()["VLLM_CPU_OMP_THREADS_BIND"] == "0-3,6-7"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in VllmProcess(VllmServer(cpu_threads_bind="auto")).environment()
    assert VllmProcess(VllmServer(cpu_threads_bind="0-1")).environment()["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    with pytest.raises(ValidationError, match="cpu_threads_bind"):
        VllmServer(cpu_threads_bind="every core")  # caught at config load, not inside vLLM's engine start
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the operator's environment wins
    assert VllmProcess(VllmServer()).environment()["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


@pytest.mark.parametrize(
    ("config", "message"),
    [({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"use_dora": True}, "DoRA"), ({"r": 64}, "rank 64")],
)
def test_adapters_vllm_would_reject_are_refused_with_the_fix(tmp_path: Path, config: dict, message: str) -> None:
    with pytest.raises(VllmError, match=message):
        check_adapter(adapter(tmp_path / "x", **config), max_rank=16)
    with pytest.raises(VllmError, match="not a LoRA adapter"):
        check_adapter(tmp_path, max_rank=16)


def test_start_refuses_without_prepared_model(tmp_path: Path) -> None:
    server = VllmProcess(VllmServer(port=1))
    with pytest.raises(VllmError, match="extraction model prepare"):
        server.start(Path(sys.executable))


def test_stale_pid_file_means_not_running(cache: Path) -> None:
    server = VllmProcess(VllmServer(port=1))
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    server.pid_file.parent.mkdir(parents=True)
    server.pid_file.write_text(done.stdout.strip())  # that process has exited
    assert server.pid() is None
    assert server.stop() is False
    assert not server.pid_file.exists()


def test_stop_terminates_a_running_server_process(cache: Path) -> None:
    server = VllmProcess(VllmServer(port=1))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    server.pid_file.parent.mkdir(parents=True)
    server.pid_file.write_text(str(child.pid))
    server._process = child
    assert server.pid() == child.pid
    assert server.stop(timeout_s=10) is True
    assert child.returncode is not None and server.pid() is None


def test_device_override() -> None:
    assert detect_device("cpu") == "cpu" and detect_device("gpu") == "gpu"
    assert detect_device("auto") in {"cpu", "gpu"}


def test_dtype_follows_the_cpu_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import backends.local.vllm as manager
    from backends.local.hardware import parse_cpuinfo

    monkeypatch.setattr(manager, "detect_device", lambda setting="auto": "cpu")
    monkeypatch.setattr("backends.local.hardware.read_cpu", lambda: parse_cpuinfo("flags: avx2 fma\n", cores=2))
    cmd = VllmProcess(VllmServer()).command(Path("/venv/bin/python"), [])
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    assert "--enable-prompt-tokens-details" in cmd  # the usage reports the prefix-cache hits
    monkeypatch.setattr("backends.local.hardware.read_cpu", lambda: parse_cpuinfo("flags: avx2 amx_bf16\n", cores=2))
    cmd = VllmProcess(VllmServer()).command(Path("/venv/bin/python"), [])
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    cmd = VllmProcess(VllmServer(dtype="float32")).command(Path("/venv/bin/python"), [])
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    with pytest.raises(ValidationError, match="dtype"):
        VllmServer(dtype="bf17")  # type: ignore[arg-type]


def test_eager_mode_by_default_only_on_cpus_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import backends.local.vllm as manager
    from backends.local.hardware import parse_cpuinfo

    monkeypatch.setattr(manager, "detect_device", lambda setting="auto": "cpu")
    monkeypatch.setattr(manager, "read_cpu", lambda: parse_cpuinfo("flags: avx2 fma\n", cores=2))
    assert "--enforce-eager" in VllmProcess(VllmServer()).command(Path("/p"), [])
    assert "--enforce-eager" not in VllmProcess(VllmServer(enforce_eager=False)).command(Path("/p"), [])
    monkeypatch.setattr(manager, "read_cpu", lambda: parse_cpuinfo("flags: avx2 amx_bf16\n", cores=2))
    assert "--enforce-eager" not in VllmProcess(VllmServer()).command(Path("/p"), [])
    monkeypatch.setattr(manager, "detect_device", lambda setting="auto": "gpu")
    assert "--enforce-eager" not in VllmProcess(VllmServer()).command(Path("/p"), [])
    assert "--enforce-eager" in VllmProcess(VllmServer(enforce_eager=True)).command(Path("/p"), [])


def test_the_managed_server_is_recognised_by_its_url() -> None:
    cfg = VllmServer(port=8000)
    assert cfg.serves("http://127.0.0.1:8000/v1") and cfg.serves("http://localhost:8000/v1/")
    assert not cfg.serves("http://127.0.0.1:8001/v1") and not cfg.serves("http://10.0.0.5:8000/v1")
    assert not cfg.serves(None) and not cfg.serves("http://127.0.0.1:8000/other")
