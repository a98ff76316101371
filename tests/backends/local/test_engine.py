"""`local_engine`: which engine serves `kind: local` backends, and how the config resolves them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from backends.local import engine
from backends.local.engine import choose_engine
from service.config import Settings
from service.routing import routes_in_effect
from tests.conftest import write_config


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without a GPU, llama.cpp already built for its CPU."""
    monkeypatch.setattr(engine, "_device", lambda setting: "cpu" if setting == "auto" else setting)
    monkeypatch.setattr(engine, "_llamacpp_built", lambda: True)


def test_auto_is_vllm_on_a_gpu_and_llamacpp_on_a_cpu(cpu_only: None) -> None:
    assert choose_engine("auto", "auto")[0] == "llamacpp"
    assert choose_engine("auto", "gpu") == ("vllm", "auto: a GPU, where vLLM's continuous batching is fastest")
    assert choose_engine("vllm", "auto")[0] == "vllm"  # a setting wins over the hardware
    assert choose_engine("llamacpp", "gpu")[0] == "llamacpp"
    with pytest.raises(ValueError, match="local_engine must be auto, vllm or llamacpp"):
        choose_engine("tgi")


def test_auto_on_a_cpu_builds_llamacpp_first_only_where_the_build_fits_a_first_run(
    cpu_only: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from backends.local import llamacpp_build as llbuild

    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path / "cache"))  # an empty cache: nothing built here
    monkeypatch.setattr(engine, "_llamacpp_built", llbuild.is_built)
    monkeypatch.setattr(engine, "_llamacpp_toolchain_missing", lambda: [])  # cmake and c++ present
    monkeypatch.setattr(engine, "usable_cores", lambda: 1)  # 667 CPU-s on 1 core: ~11 min, past the first-run budget
    chosen, why = choose_engine("auto", "auto")
    assert chosen == "vllm" and "would not fit a first run" in why and "make llamacpp" in why
    monkeypatch.setattr(engine, "usable_cores", lambda: 2)  # ~5.6 min, started before the venv: built on first install
    chosen, why = choose_engine("auto", "auto")
    assert chosen == "llamacpp" and "built once for this CPU on first install (~6 min on 2 cores)" in why
    monkeypatch.setattr(engine, "_llamacpp_toolchain_missing", llbuild.toolchain_missing)
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no cmake, no compiler
    chosen, why = choose_engine("auto", "auto")
    assert chosen == "vllm" and "no cmake or C++ compiler" in why
    assert choose_engine("llamacpp", "auto")[0] == "llamacpp"  # asked for by name: its install says what is missing
    with pytest.raises(llbuild.LlamaCppError, match="needs cmake and C\\+\\+ compiler"):
        llbuild.ensure_llama_cpp(log=lambda line: None)
    root = llbuild.home()  # what a finished build leaves: the marker and both binaries
    (root / "bin").mkdir(parents=True)
    for target in llbuild.TARGETS[:-1]:
        (root / "bin" / target).write_text("")
    (root / ".extraction-built").write_text("{}")
    assert choose_engine("auto", "auto")[0] == "vllm"  # a half-copied build does not count
    (root / "bin" / llbuild.TARGETS[-1]).write_text("")
    assert choose_engine("auto", "auto")[0] == "llamacpp"  # a cached build needs no toolchain and no time
    assert choose_engine("auto", "gpu")[0] == "vllm"


def local_config(tmp_path: Path, **extra: object) -> Path:
    local = {"kind": "local", "model": "smollm2-135m", "prompt_style": "few_shot"}
    return write_config(
        tmp_path / "config.yaml",
        {
            "prompted": local,
            "tuned": {**local, "model": "receipt-lora", "prompt_style": "finetuned"},
            "pinned": {**local, "base_url": "http://127.0.0.1:9999/v1"},
        },  # fmt: skip
        **extra,
    )


def test_local_backends_become_the_chosen_engine_on_its_managed_server(tmp_path: Path, cpu_only: None) -> None:
    path = local_config(tmp_path, llamacpp={"port": 8123}, vllm={"port": 8124})
    settings = Settings(config=path)  # type: ignore[call-arg]
    assert (settings.local_engine, settings.engine) == ("auto", "llamacpp")
    assert {b.kind for b in settings.backends.values()} == {"llamacpp"}
    assert settings.backends["tuned"].base_url == "http://127.0.0.1:8123/v1"
    assert settings.backends["pinned"].base_url == "http://127.0.0.1:9999/v1"  # an explicit URL is kept
    assert settings.backends["tuned"].retry_timeouts is False  # the local engines' policy follows the kind
    vllm = Settings(config=local_config(tmp_path, vllm={"port": 8124}, local_engine="vllm"))  # type: ignore[call-arg]
    assert vllm.backends["tuned"].kind == "vllm" and vllm.backends["tuned"].base_url == "http://127.0.0.1:8124/v1"


def test_the_environment_flips_the_engine(tmp_path: Path, cpu_only: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTRACTION_LOCAL_ENGINE", "vllm")
    settings = Settings(config=local_config(tmp_path))  # type: ignore[call-arg]
    assert settings.engine == "vllm" and settings.backends["prompted"].base_url == "http://127.0.0.1:8000/v1"


def test_an_unknown_engine_is_a_clear_config_error(tmp_path: Path, cpu_only: None) -> None:
    with pytest.raises(ValidationError, match="local_engine must be auto, vllm or llamacpp, not 'tgi'"):
        Settings(config=local_config(tmp_path, local_engine="tgi"))  # type: ignore[call-arg]


def test_a_route_to_a_missing_llamacpp_adapter_is_skipped(tmp_path: Path, cpu_only: None) -> None:
    (tmp_path / "receipt").mkdir()
    (tmp_path / "receipt" / "adapter_config.json").write_text("{}")
    path = local_config(tmp_path, llamacpp={"adapters": {"receipt-lora": "receipt", "invoice-lora": "nowhere"}},
                        routes={"receipt": "tuned", "invoice": "pinned"})  # fmt: skip
    settings = Settings(config=path)  # type: ignore[call-arg]
    kept, dropped = routes_in_effect(settings)
    assert kept == {"receipt": "tuned", "invoice": "pinned"} and dropped == {}
    settings.backends["pinned"].base_url = settings.backends["tuned"].base_url
    settings.backends["pinned"].model = "invoice-lora"
    kept, dropped = routes_in_effect(settings)
    assert kept == {"receipt": "tuned"} and "invoice-lora" in dropped["invoice"]


def test_the_shipped_default_serves_its_adapters_on_either_engine(cpu_only: None) -> None:
    settings = Settings()  # type: ignore[call-arg]
    assert (settings.local_engine, settings.engine) == ("auto", "llamacpp")
    assert settings.llamacpp.adapters == settings.vllm.adapters  # one set of adapters, whichever engine
    assert settings.backends["local-receipt"].kind == "llamacpp"


def test_the_choice_is_made_once_at_load_and_matches_the_backends(
    tmp_path: Path, cpu_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_llamacpp_built", lambda: False)
    monkeypatch.setattr(engine, "_llamacpp_toolchain_missing", lambda: [])
    monkeypatch.setattr(engine, "usable_cores", lambda: 1)
    settings = Settings(config=local_config(tmp_path))  # type: ignore[call-arg]
    assert settings.engine == "vllm" and "would not fit a first run" in settings.engine_reason
    monkeypatch.setattr(engine, "_llamacpp_built", lambda: True)  # a build appears while the service runs
    assert settings.engine == "vllm" == settings.backends["tuned"].kind  # still what the backends became
    assert settings.model_copy().engine == "vllm"
    assert Settings(config=local_config(tmp_path)).engine == "llamacpp"  # type: ignore[call-arg]  # the next load
