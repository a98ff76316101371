"""LoRA fine-tuning on a task's short `finetuned` prompt, loss on the answer tokens only.

    extraction train --task receipt --train data/receipt/train.jsonl --val data/receipt/val.jsonl \\
        --out adapters/receipt --epochs 3
    extraction train --config_file train.yaml          # the same arguments from YAML

Runs on a GPU when one is present (fp32 weights, bf16 autocast, batch 8), else on the CPU in the dtype it computes
fast (bf16 where native, fp32 elsewhere; `--dtype` overrides) in batches of 4 accumulated over 2 (the same effective
batch, less than half the peak memory). Batches group examples of similar length, so short ones do not pay for a
long one's padding; the output layer runs at the answer positions only (training/loss.py). A run whose loss,
gradient norm, validation loss or weights turn non-finite stops there and keeps the best checkpoint (or the last
finite weights). Writes the adapter (best epoch by validation loss), a training card (JSON + Markdown) with data
hashes, hyper-parameters, the loss curve (PNG), validation loss and field-F1 per epoch, speed and wall time;
`--merge` also writes the merged model.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from backends.local.hardware import DTYPE_SETTINGS, CpuInfo, choose_dtype, read_cpu
from service.config import DEFAULT_CONFIG
from service.parsing import dumps_compact
from service.prompts import build_messages
from service.tasks import Task, load_tasks
from training.datasets import Record, file_sha256, load_dataset
from training.lora import DEFAULT_TARGETS, build_lora_config


@dataclass
class TrainArgs:
    task: str = field(metadata={"help": "Task name (its schema validates the data; its name is in the prompt)."})
    train: Path = field(metadata={"help": "Training JSONL."})
    out: Path = field(default=Path("adapters/extraction-lora"), metadata={"help": "Adapter folder to write."})
    val: Path | None = field(default=None, metadata={"help": "Validation JSONL (loss and field-F1 per epoch)."})
    tasks_dir: Path = field(default=DEFAULT_CONFIG.parent / "tasks", metadata={"help": "Where task YAMLs live."})
    base_model: str | None = field(default=None, metadata={"help": "HF folder or id; default: prepared SmolLM2."})
    init_adapter: Path | None = field(
        default=None,
        metadata={
            "help": "Continue training this peft LoRA adapter (its rank, alpha, dropout and target modules: "
            "--r/--alpha/--dropout/--target_modules are then ignored) instead of a fresh one: a second stage, or "
            "a shipped adapter tuned on your own data."
        },
    )
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training data (fractions allowed)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many steps (overrides epochs)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (linear decay, no warm-up)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0: no clipping)."})
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout, in [0, 1)."})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGETS), metadata={"help": "Linear layers that get an adapter."}
    )
    batch_size: int | None = field(default=None, metadata={"help": "Examples per batch (default: GPU 8, CPU 4)."})
    grad_accum: int | None = field(
        default=None, metadata={"help": "Batches per update (default 1; on a CPU 2 if batch_size is unset too)."}
    )
    group_by_length: bool = field(
        default=True, metadata={"help": "Batch examples of similar length together (less padding computed)."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass: less memory, slower steps."}
    )
    max_length: int = field(default=1024, metadata={"help": "Longer examples are skipped (and counted)."})
    answer_only_logits: bool = field(
        default=True, metadata={"help": "Output layer at answer positions only (same loss, less compute and memory)."}
    )
    fast_dropout: bool = field(
        default=True,
        metadata={"help": "On a CPU, LoRA dropout masks from 15-bit random fields (p rounded to 1/32768; ~5x faster)."},
    )
    cpu_autocast: bool = field(
        default=True,
        metadata={"help": "On a bf16 CPU, the LoRA branch in bf16 under autocast (fp32 adapter weights stay)."},
    )
    drop_padding_mask: bool = field(
        default=True,
        metadata={"help": "Right-padded batches without the attention mask (same loss, checked once; causal kernel)."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log (and check for NaN) every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed for the shuffle, dropout and adapter initialisation."})
    limit: int | None = field(default=None, metadata={"help": "Train on the first N records only."})
    eval_samples: int = field(default=32, metadata={"help": "Validation items generated for field-F1 (0: off)."})
    merge: bool = field(default=False, metadata={"help": "Also write the merged model to OUT/merged."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPUs and bf16-native CPUs, float32 elsewhere), bfloat16, float32, float16."},
    )


@dataclass
class Inputs:
    """The task and its records, loaded and validated against the task's schema."""

    task: Task
    train: list[Record]
    val: list[Record]


@dataclass
class Runtime:
    """Where training runs, in which dtype and batches (all go into the card)."""

    device: str  # "cuda" or "cpu"
    dtype: str
    cpu: CpuInfo
    batch_size: int = 8
    grad_accum: int = 1

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


@dataclass
class Encoded:
    """Token ids ready for the collator, and how many records were left out and why."""

    examples: list[dict[str, list[int]]]
    skipped: Counter[str] = field(default_factory=Counter)


def encode_or_skip(tokenizer: Any, task: Task, record: Record, max_length: int) -> tuple[dict[str, Any] | None, str]:
    """(example, "") or (None, why): "too_long" or "no_answer".

    Never truncated: a cut answer teaches a wrong end, and one cut to nothing leaves every label -100, which makes
    the loss 0/0 = NaN for a batch of such examples.
    """
    prompt = tokenizer.apply_chat_template(
        build_messages(task, record.text, "finetuned"), add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(dumps_compact(record.output) + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        return None, "no_answer"
    if len(prompt_ids) + len(answer_ids) > max_length:
        return None, "too_long"
    example = {
        "input_ids": prompt_ids + answer_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
        "labels": [-100] * len(prompt_ids) + answer_ids,
    }
    return example, ""


def encode(tokenizer: Any, task: Task, record: Record, max_length: int) -> dict[str, list[int]] | None:
    """Chat-formatted prompt + compact JSON answer; labels mask the prompt so only the answer is learned.
    None when the whole example does not fit in `max_length` (or has no answer tokens)."""
    return encode_or_skip(tokenizer, task, record, max_length)[0]


def encode_all(tokenizer: Any, task: Task, records: list[Record], max_length: int) -> Encoded:
    """Every record that encodes whole; the others counted by reason."""
    encoded = Encoded([])
    for record in records:
        example, why = encode_or_skip(tokenizer, task, record, max_length)
        if example is None:
            encoded.skipped[why] += 1
        else:
            encoded.examples.append(example)
    return encoded


def load_inputs(args: TrainArgs) -> Inputs:
    """The task by name and its train (first `limit`) and validation records."""
    tasks = load_tasks(args.tasks_dir)
    if args.task not in tasks:
        raise SystemExit(f"unknown task {args.task!r}; available: {', '.join(sorted(tasks))}")
    task = tasks[args.task]
    return Inputs(task, load_dataset(args.train, task)[: args.limit], load_dataset(args.val, task) if args.val else [])


# (batch, accumulation) when neither is set: an effective batch of 8 everywhere. On a CPU, 4 x 2 peaked at ~9 GiB
# where 8 x 1 took 21 GiB (SmolLM2-135M, 400-900-token receipts, full logits), for the same update.
DEFAULT_BATCH = {"cuda": (8, 1), "cpu": (4, 2)}


def resolve_batch(device: str, batch_size: int | None, grad_accum: int | None) -> tuple[int, int]:
    """(batch, accumulation): the device's default for what is unset; a batch set alone accumulates nothing, as
    before these defaults (the effective batch is what the caller asked for)."""
    default_batch, default_accum = DEFAULT_BATCH[device]
    if batch_size is None:
        return default_batch, default_accum if grad_accum is None else grad_accum
    return batch_size, 1 if grad_accum is None else grad_accum


def pick_runtime(dtype_setting: str, batch_size: int | None = None, grad_accum: int | None = None) -> Runtime:
    """The GPU if there is one, else the CPU; the dtype it computes fast and the batches that fit it, unless set."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = read_cpu()
    batch, accum = resolve_batch(device, batch_size, grad_accum)
    return Runtime(device, choose_dtype(dtype_setting, device, cpu), cpu, batch, accum)


def check_init_adapter(path: Path) -> dict[str, Any]:
    """The adapter's peft config; OSError saying what is wrong with the folder (checked before anything loads)."""
    config = path / "adapter_config.json"
    if not config.is_file():
        raise OSError(f"--init_adapter {path}: no adapter_config.json there (not a peft adapter folder)")
    try:
        settings: dict[str, Any] = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise OSError(f"--init_adapter {config}: not JSON ({e})") from None
    if settings.get("peft_type") != "LORA":
        raise OSError(f"--init_adapter {path}: a {settings.get('peft_type')!r} adapter; only LoRA is trained here")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if settings.get(k) is None]
    if missing:
        raise OSError(f"--init_adapter {config}: no {', '.join(missing)} in it")
    if not (path / "adapter_model.safetensors").is_file() and not (path / "adapter_model.bin").is_file():
        raise OSError(f"--init_adapter {path}: no adapter_model.safetensors (the weights) there")
    return settings


def warn_other_base(settings: dict[str, Any], base: str) -> None:
    """Say so on stderr when the adapter was trained on a base that is not this one by name (a moved folder of
    the same model is fine; a different model's adapter fails to load or learns from a wrong start)."""
    trained_on = settings.get("base_model_name_or_path")
    if trained_on and Path(str(trained_on)).name != Path(base).name:
        print(f"warning: --init_adapter was trained on {trained_on}, continuing it on {base}", file=sys.stderr)  # noqa: T201


def load_model(base: str, args: TrainArgs, runtime: Runtime) -> tuple[Any, Any]:
    """The base model wrapped with a fresh LoRA adapter, or `args.init_adapter` made trainable (fp32 adapter
    weights either way), and its tokenizer."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.lora import upcast_trainable

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The collator pads on this side; generation asks for left padding per call (see callbacks.generate_outputs).
    tokenizer.padding_side = "right"
    # On a GPU the weights load in fp32 and bf16 runs under autocast (mixed precision); on a CPU they load in the
    # dtype itself, so an fp32 CPU never touches emulated bf16.
    load_dtype = torch.float32 if runtime.cuda else getattr(torch, runtime.dtype)
    where = "cuda" if runtime.cuda else runtime.cpu.describe()
    print(f"training in {runtime.dtype} on {where}", file=sys.stderr)  # noqa: T201
    model = AutoModelForCausalLM.from_pretrained(base, dtype=load_dtype)
    if args.init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(args.init_adapter), is_trainable=True)
    else:
        model = get_peft_model(model, build_lora_config(args.r, args.alpha, args.dropout, args.target_modules))
    upcast_trainable(model)
    if args.fast_dropout and not runtime.cuda:
        from training.speedups import use_fast_dropout

        use_fast_dropout(model)
    return model, tokenizer


def training_arguments(args: TrainArgs, *, has_val: bool, runtime: Runtime) -> Any:
    """The Trainer's arguments: evaluate and keep the best checkpoint per epoch (or at `max_steps`) when there is
    validation data; length-grouped batches; NaN left visible to the guard."""
    import torch
    from transformers import TrainingArguments

    by_steps = args.max_steps > 0
    strategy = ("steps" if by_steps else "epoch") if has_val else "no"
    return TrainingArguments(
        output_dir=str(args.out / "checkpoints"),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=runtime.batch_size,
        per_device_eval_batch_size=runtime.batch_size,
        gradient_accumulation_steps=runtime.grad_accum,
        learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        activation_checkpointing=args.gradient_checkpointing,
        logging_steps=max(1, min(args.logging_steps, args.max_steps if by_steps else args.logging_steps)),
        # The Trainer's filter logs the running mean in place of a NaN step's loss (a window of NaN steps logs 0):
        # it hides exactly what NonFiniteGuard looks for.
        logging_nan_inf_filter=False,
        include_num_input_tokens_seen="non_padding",
        # Nothing computes metrics from predictions (FieldF1 generates): gathering every evaluation batch's logits,
        # T x vocab floats per example, only cost memory.
        prediction_loss_only=True,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=args.max_steps if by_steps else None,
        save_steps=args.max_steps if by_steps else None,
        load_best_model_at_end=has_val,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=1,
        save_only_model=True,
        report_to=[],
        seed=args.seed,
        use_cpu=not runtime.cuda,
        bf16=runtime.cuda and runtime.dtype == "bfloat16" and torch.cuda.is_bf16_supported(),
        fp16=runtime.cuda and runtime.dtype == "float16",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def build_trainer(
    args: TrainArgs, model: Any, tokenizer: Any, data: tuple[Encoded, Encoded], runtime: Runtime, callbacks: list[Any]
) -> Any:
    """A Trainer over the encoded train and validation sets, batches padded per batch (labels with -100); its loss
    computes the output layer at answer positions only unless `answer_only_logits` is off; `StepSpeedups` drops the
    padding mask and runs a bf16 CPU's loss under autocast as the arguments say."""
    from transformers import DataCollatorForSeq2Seq, Trainer

    from training.loss import AnswerOnlyTrainer
    from training.speedups import StepSpeedups

    train, val = data
    base_class = AnswerOnlyTrainer if args.answer_only_logits else Trainer
    trainer_class = type(base_class.__name__, (StepSpeedups, base_class), {})
    return trainer_class(
        model=model,
        args=training_arguments(args, has_val=bool(val.examples), runtime=runtime),
        train_dataset=train.examples,
        eval_dataset=val.examples or None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=callbacks,
        cpu_autocast=args.cpu_autocast and not runtime.cuda and runtime.dtype == "bfloat16",
        drop_padding_mask=args.drop_padding_mask,
    )


def save_artefacts(args: TrainArgs, trainer: Any, tokenizer: Any, base: str) -> tuple[Path | None, Path | None]:
    """Adapter + tokenizer (+ merged model) and the loss curve; the checkpoints folder removed.
    Returns (adapter, merged); no adapter is written when its weights are not finite (nothing good was kept)."""
    from backends.local.merge import merge_adapter
    from training.card import plot_losses
    from training.lora import all_finite, trainable_state

    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out / "checkpoints", ignore_errors=True)
    plot_losses(trainer.state.log_history, args.out / "loss.png")
    if not all_finite(trainable_state(trainer.model).values()):
        return None, None
    trainer.model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    if args.merge:
        merge_adapter(args.out, args.out / "merged", Path(base))
    merged = args.out / "merged" if args.merge else None
    return args.out, merged


def data_card(args: TrainArgs, inputs: Inputs, train: Encoded, val: Encoded) -> dict[str, Any]:
    """Which files, their hashes, and how many records were used or skipped (and why)."""

    def part(path: Path, records: list[Record], encoded: Encoded) -> dict[str, Any]:
        return {"file": str(path), "sha256": file_sha256(path), "records": len(records),
                "used": len(encoded.examples), "skipped_too_long": encoded.skipped["too_long"],
                "skipped_no_answer": encoded.skipped["no_answer"]}  # fmt: skip

    val_part = part(args.val, inputs.val, val) if args.val else None
    return {"train": part(args.train, inputs.train, train), "val": val_part}


def run_card(trainer: Any, result: Any, runtime: Runtime, callbacks: dict[str, Any]) -> dict[str, Any]:
    """What the run did: steps, losses, validation per epoch, an early stop, speed and the machine."""
    import torch

    from training.speedups import speedups_card

    best = trainer.state.best_model_checkpoint
    timer = callbacks["timer"]
    return {
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "validation": callbacks["field_f1"].history,
        "best_checkpoint": Path(best).name if best else None,
        "best_eval_loss": trainer.state.best_metric,
        "stopped_early": callbacks["guard"].stopped,
        "throughput": {
            "s_per_step": timer.s_per_step,
            "tokens_per_s": timer.tokens_per_s(trainer.state),
            "tokens_seen": trainer.state.num_input_tokens_seen,
        },
        "speedups": speedups_card(trainer),
        "device": "cuda" if runtime.cuda else f"cpu ({platform.machine()})",
        "dtype": runtime.dtype,
        "cpu": runtime.cpu.as_dict(),
        "gpu": torch.cuda.get_device_name(0) if runtime.cuda else None,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def check_args(args: TrainArgs) -> None:
    """SystemExit naming the first argument out of its range, before anything loads (peft, torch and the optimizer
    would raise a traceback, or in dropout's case below 0 silently train without it)."""
    checks = [
        ("dropout", 0.0 <= args.dropout < 1.0, "in [0, 1)"),
        ("r", args.r >= 1, "at least 1"),
        ("alpha", args.alpha > 0, "positive"),
        ("learning_rate", args.learning_rate >= 0, "0 (weights kept) or positive"),
        ("epochs", args.max_steps > 0 or args.epochs > 0, "positive (or --max_steps set)"),
        ("max_length", args.max_length >= 1, "at least 1"),
        ("max_grad_norm", args.max_grad_norm >= 0, "0 (no clipping) or positive"),
        ("batch_size", args.batch_size is None or args.batch_size >= 1, "at least 1"),
        ("grad_accum", args.grad_accum is None or args.grad_accum >= 1, "at least 1"),
        ("eval_samples", args.eval_samples >= 0, "0 (off) or positive"),
        ("logging_steps", args.logging_steps >= 1, "at least 1"),
        ("limit", args.limit is None or args.limit >= 1, "at least 1"),
        ("dtype", args.dtype in DTYPE_SETTINGS, f"one of {', '.join(DTYPE_SETTINGS)}"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise SystemExit(f"error: --{name} must be {expected}, got {getattr(args, name)}")
    check_out(args.out)


def check_out(out: Path) -> None:
    """SystemExit unless the adapter folder can be written: found at the start, not after an hour of training.
    Nothing is created here (a run that stops early leaves no empty folder)."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; give a folder for the adapter")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SystemExit(f"error: --out {out}: {existing} is a file, so the folder cannot be made")
    try:  # a probe, removed at once (access() says yes to root on a read-only mount or /proc)
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as e:
        raise SystemExit(f"error: --out {out}: cannot write in {existing} ({e.strerror})") from None


def main(args: TrainArgs, *, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train, keep the best epoch, write adapter + card (+ merged model); returns the card.
    `callbacks`: extra TrainerCallbacks (experiments, tests), run after ours."""
    from backends.local.base_model import prepare
    from training.callbacks import FieldF1, NonFiniteGuard, StepTimer
    from training.card import write_card

    check_args(args)
    started = time.time()
    init = None
    if args.init_adapter is not None:  # its own settings, so that the card says what was trained
        init = check_init_adapter(args.init_adapter)
        args = replace(
            args,
            r=init["r"],
            alpha=init["lora_alpha"],
            dropout=init.get("lora_dropout", args.dropout),
            target_modules=sorted(init["target_modules"])
            if isinstance(init["target_modules"], list)
            else [init["target_modules"]],  # a regex
        )
    inputs = load_inputs(args)
    runtime = pick_runtime(args.dtype, args.batch_size, args.grad_accum)
    base = args.base_model or str(prepare())
    if init is not None:
        warn_other_base(init, base)
    model, tokenizer = load_model(base, args, runtime)
    train, val = (encode_all(tokenizer, inputs.task, part, args.max_length) for part in (inputs.train, inputs.val))
    if not train.examples:
        raise SystemExit(f"no training example fits max_length {args.max_length}")
    ours = {"guard": NonFiniteGuard(), "field_f1": FieldF1(inputs.task, tokenizer, inputs.val[: args.eval_samples]),
            "timer": StepTimer()}  # fmt: skip
    trainer = build_trainer(args, model, tokenizer, (train, val), runtime, [*ours.values(), *callbacks])
    result = trainer.train()
    adapter, merged = save_artefacts(args, trainer, tokenizer, base)
    card = {
        "task": inputs.task.name,
        "prompt_style": "finetuned",
        "base_model": base,
        "adapter": str(adapter) if adapter else None,
        "merged_model": str(merged) if merged else None,
        "data": data_card(args, inputs, train, val),
        "hyperparameters": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
            "batch_size": runtime.batch_size,
            "grad_accum": runtime.grad_accum,
        },  # as resolved
        **run_card(trainer, result, runtime, ours),
        "wall_time_s": round(time.time() - started, 1),
    }
    write_card(card, args.out)
    return card


def parse_config_file(path: Path) -> TrainArgs:
    """TrainArgs from a YAML file of the same names, or SystemExit saying what is wrong with it."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0]
        raise SystemExit(f"error: --config_file {path}: cannot be read as YAML ({reason})") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"error: --config_file {path}: must be a mapping of argument names to values")
    names = {f.name for f in fields(TrainArgs)}
    if unknown := sorted(set(raw) - names):
        raise SystemExit(f"error: --config_file {path}: unknown argument(s) {', '.join(unknown)}")
    if missing := sorted(n for n in ("task", "train") if n not in raw):
        raise SystemExit(f"error: --config_file {path}: {', '.join(missing)} missing")
    argv: list[str] = []  # through the command line's own parser, so that values convert the same way
    for name, value in raw.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{name}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return parse_argv(argv, prog=f"extraction train --config_file {path}")


def parse_argv(argv: list[str], prog: str = "extraction train") -> TrainArgs:
    """TrainArgs from command-line arguments; a usage error (exit 2) for unknown or malformed ones."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        TrainArgs,
        prog=prog,
        description="LoRA fine-tuning of a task's adapter. Or: extraction train --config_file "
        "FILE.yaml, the same arguments by name (task: receipt, train: data/train.jsonl, ...).",
    )
    try:
        (args,) = parser.parse_args_into_dataclasses(argv)
    except ValueError as e:  # HfArgumentParser's "Some specified arguments are not used ..."
        parser.error(str(e))
    return args  # type: ignore[no-any-return]


def cli(argv: list[str] | None = None) -> None:
    """Parse TrainArgs from the command line or `--config_file FILE.yaml`, then train."""

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--config_file"]:
        if len(argv) != 2:
            raise SystemExit("error: --config_file FILE takes the file alone (put every other argument in it)")
        args = parse_config_file(Path(argv[1]))
    else:
        args = parse_argv(argv)
    from backends.local.base_model import ModelPrepareError
    from backends.local.merge import MergeError
    from service.tasks import TaskLoadError
    from training.datasets import DatasetError

    try:
        card = main(args)
    except (DatasetError, TaskLoadError, ModelPrepareError, MergeError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    if card["adapter"] is None:
        raise SystemExit(f"error: training diverged and no finite weights were kept; see {args.out}/training_card.md")
    print(json.dumps({k: card[k] for k in ("adapter", "steps", "train_loss", "best_eval_loss", "wall_time_s")}))  # noqa: T201


if __name__ == "__main__":
    cli()
