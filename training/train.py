"""LoRA fine-tuning on a task's short `finetuned` prompt, loss on the answer tokens only.

    extraction train --task receipt --train data/receipt/train.jsonl --val data/receipt/val.jsonl \\
        --out adapters/receipt --epochs 3
    extraction train --config_file train.yaml          # the same arguments from YAML

Runs on a GPU when one is present (bf16 mixed precision), else on the CPU in the dtype it computes fast
(bf16 where native, fp32 elsewhere; `--dtype` overrides). Writes the adapter (best epoch by validation
loss), a training card (JSON + Markdown) with data hashes, hyper-parameters, the loss curve (PNG), validation
loss and field-F1 per epoch and the wall time; `--merge` also writes the merged model for fastest serving.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backends.local.hardware import choose_dtype, read_cpu
from service.config import DEFAULT_CONFIG
from service.parsing import OutputNotJSON, dumps_compact, parse_output
from service.prompts import build_messages
from service.tasks import Task, load_tasks
from training.datasets import Record, file_sha256, load_dataset
from training.lora import DEFAULT_TARGETS, build_lora_config
from training.metrics import Scores


@dataclass
class TrainArgs:
    task: str = field(metadata={"help": "Task name (its schema validates the data; its name is in the prompt)."})
    train: Path = field(metadata={"help": "Training JSONL."})
    out: Path = field(default=Path("adapters/extraction-lora"), metadata={"help": "Adapter folder to write."})
    val: Path | None = field(default=None, metadata={"help": "Validation JSONL (loss and field-F1 per epoch)."})
    tasks_dir: Path = field(default=DEFAULT_CONFIG.parent / "tasks", metadata={"help": "Where task YAMLs live."})
    base_model: str | None = field(default=None, metadata={"help": "HF folder or id; default: prepared SmolLM2."})
    epochs: float = 3.0
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many steps (overrides epochs)."})
    learning_rate: float = 2e-4
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = field(default=512, metadata={"help": "Longer examples are skipped (and counted)."})
    seed: int = 0
    limit: int | None = field(default=None, metadata={"help": "Train on the first N records only."})
    eval_samples: int = field(default=32, metadata={"help": "Validation items generated for field-F1 (0: off)."})
    merge: bool = field(default=False, metadata={"help": "Also write the merged model to OUT/merged."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPUs and bf16-native CPUs, float32 elsewhere), bfloat16, float32, float16."},
    )


def encode(tokenizer: Any, task: Task, record: Record, max_length: int) -> dict[str, list[int]] | None:
    """Chat-formatted prompt + compact JSON answer; labels mask the prompt so only the answer is learned."""
    prompt = tokenizer.apply_chat_template(
        build_messages(task, record.text, "finetuned"), add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(dumps_compact(record.output) + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + len(answer_ids) > max_length:
        return None
    return {
        "input_ids": prompt_ids + answer_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
        "labels": [-100] * len(prompt_ids) + answer_ids,
    }


def generate_outputs(model: Any, tokenizer: Any, task: Task, records: list[Record], batch: int = 8) -> list[Any]:
    """Greedy answers for `records` (None where the text is not JSON); for validation field-F1."""
    import torch

    tokenizer.padding_side = "left"
    outputs: list[Any] = []
    was_training = model.training
    model.eval()
    max_new = task.max_output_tokens or 256
    with torch.no_grad():
        for start in range(0, len(records), batch):
            prompts = [
                tokenizer.apply_chat_template(
                    build_messages(task, r.text, "finetuned"), add_generation_prompt=True, tokenize=False
                )
                for r in records[start : start + batch]
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            generated = model.generate(
                **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
            for row in generated[:, enc["input_ids"].shape[1] :]:
                try:
                    outputs.append(parse_output(tokenizer.decode(row, skip_special_tokens=True)).value)
                except OutputNotJSON:
                    outputs.append(None)
    if was_training:
        model.train()
    return outputs


def field_scores(task: Task, records: list[Record], predictions: list[Any]) -> dict[str, Any]:
    fields = [f for f in task.json_schema.get("properties", {}) if f not in task.eval_ignore]
    scores = Scores()
    for record, pred in zip(records, predictions, strict=True):
        scores.add(record.output, pred if isinstance(pred, dict) else None, fields)
    out = scores.as_dict()
    out["json_rate"] = round(sum(isinstance(p, dict) for p in predictions) / max(1, len(predictions)), 4)
    return out


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("LoRA training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: TrainArgs) -> dict[str, Any]:
    """Train, keep the best epoch, write adapter + card (+ merged model); returns the card."""
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from training.base_model import prepare

    started = time.time()
    tasks = load_tasks(args.tasks_dir)
    if args.task not in tasks:
        raise SystemExit(f"unknown task {args.task!r}; available: {', '.join(sorted(tasks))}")
    task = tasks[args.task]
    train_records = load_dataset(args.train, task)[: args.limit]
    val_records = load_dataset(args.val, task) if args.val else []
    base = args.base_model or str(prepare())
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = torch.cuda.is_available()
    cpu = read_cpu()
    dtype = choose_dtype(args.dtype, "cuda" if cuda else "cpu", cpu)
    # On a GPU the weights load in fp32 and bf16 runs under autocast (mixed precision); on a CPU they load in the
    # dtype itself, so an fp32 CPU never touches emulated bf16.
    load_dtype = torch.float32 if cuda else getattr(torch, dtype)
    print(f"training in {dtype} on {'cuda' if cuda else cpu.describe()}", file=sys.stderr)  # noqa: T201
    model = AutoModelForCausalLM.from_pretrained(base, dtype=load_dtype)
    model = get_peft_model(model, build_lora_config(args.r, args.alpha, args.dropout, args.target_modules))

    def encode_all(records: list[Record]) -> tuple[list[dict[str, list[int]]], int]:
        encoded = [encode(tokenizer, task, r, args.max_length) for r in records]
        kept = [e for e in encoded if e is not None]
        return kept, len(encoded) - len(kept)

    train_set, skipped_train = encode_all(train_records)
    val_set, skipped_val = encode_all(val_records)
    if not train_set:
        raise SystemExit(f"no training example fits max_length {args.max_length}")
    epoch_metrics: list[dict[str, Any]] = []
    eval_subset = val_records[: args.eval_samples]

    class FieldF1(TrainerCallback):  # type: ignore[misc]
        def on_evaluate(self, targs: Any, state: Any, control: Any, **kwargs: Any) -> None:
            entry: dict[str, Any] = {"epoch": state.epoch, "step": state.global_step,
                                     "eval_loss": (kwargs.get("metrics") or {}).get("eval_loss")}  # fmt: skip
            if eval_subset:
                scores = field_scores(task, eval_subset, generate_outputs(model, tokenizer, task, eval_subset))
                entry.update(field_f1=scores["field_micro"]["f1"], exact_match=scores["exact_match"],
                             json_rate=scores["json_rate"])  # fmt: skip
            epoch_metrics.append(entry)
            print(f"validation after epoch {state.epoch:.2f}: {entry}", file=sys.stderr)  # noqa: T201

    has_val = bool(val_set)
    by_steps = args.max_steps > 0
    strategy = ("steps" if by_steps else "epoch") if has_val else "no"
    training_args = TrainingArguments(
        output_dir=str(args.out / "checkpoints"),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=max(1, min(10, args.max_steps if by_steps else 10)),
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
        use_cpu=not cuda,
        bf16=cuda and dtype == "bfloat16" and torch.cuda.is_bf16_supported(),
        fp16=cuda and dtype == "float16",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set or None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[FieldF1()] if has_val else [],
    )
    result = trainer.train()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    best = trainer.state.best_model_checkpoint
    shutil.rmtree(args.out / "checkpoints", ignore_errors=True)
    plot_losses(trainer.state.log_history, args.out / "loss.png")
    merged_dir = None
    if args.merge:
        from training.lora import merge_adapter

        merged_dir = merge_adapter(Path(base), args.out, args.out / "merged")
    card = {
        "task": task.name,
        "prompt_style": "finetuned",
        "base_model": base,
        "adapter": str(args.out),
        "merged_model": str(merged_dir) if merged_dir else None,
        "data": {
            "train": {
                "file": str(args.train),
                "sha256": file_sha256(args.train),
                "records": len(train_records),
                "used": len(train_set),
                "skipped_too_long": skipped_train,
            },
            "val": {
                "file": str(args.val),
                "sha256": file_sha256(args.val),
                "records": len(val_records),
                "skipped_too_long": skipped_val,
            }
            if args.val
            else None,
        },  # fmt: skip
        "hyperparameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "validation": epoch_metrics,
        "best_checkpoint": Path(best).name if best else None,
        "best_eval_loss": trainer.state.best_metric,
        "wall_time_s": round(time.time() - started, 1),
        "device": "cuda" if cuda else f"cpu ({platform.machine()})",
        "dtype": dtype,
        "cpu": cpu.as_dict(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    (args.out / "training_card.json").write_text(json.dumps(card, indent=2))
    (args.out / "training_card.md").write_text(card_markdown(card))
    return card


def card_markdown(card: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {m['epoch']:.2f} | {m['step']} | {m.get('eval_loss') or 0:.4f} | {m.get('field_f1', '-')} | "
        f"{m.get('exact_match', '-')} | {m.get('json_rate', '-')} |"
        for m in card["validation"]
    )
    hp = card["hyperparameters"]
    train, val = card["data"]["train"], card["data"]["val"]
    val_line = f"`{val['file']}` ({val['records']} records), sha256 `{val['sha256']}`" if val else "none"
    targets = ", ".join(hp["target_modules"])
    return f"""# Training card: `{card["task"]}` LoRA adapter

- base model: `{card["base_model"]}`; prompt style: `finetuned` (short prompt, no examples)
- train: `{train["file"]}` ({train["used"]} of {train["records"]} records used), sha256 `{train["sha256"]}`
- validation: {val_line}
- LoRA r={hp["r"]} alpha={hp["alpha"]} dropout={hp["dropout"]} targets={targets}
- learning rate {hp["learning_rate"]}, batch {hp["batch_size"]} x accumulation {hp["grad_accum"]}, \
epochs {hp["epochs"]}, max steps {hp["max_steps"]}, seed {hp["seed"]}
- steps {card["steps"]}, final train loss {card["train_loss"]}, best validation loss {card["best_eval_loss"]} \
({card["best_checkpoint"]})
- wall time {card["wall_time_s"]} s on {card["device"]} in {card.get("dtype", "bfloat16")}

| epoch | step | validation loss | field F1 | exact match | JSON rate |
|---|---|---|---|---|---|
{rows}

![loss curve](loss.png)
"""


def cli(argv: list[str] | None = None) -> None:
    """Parse TrainArgs from the command line or `--config_file FILE.yaml`, then train."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainArgs)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--config_file":
        (args,) = parser.parse_yaml_file(argv[1])
    else:
        (args,) = parser.parse_args_into_dataclasses(argv)
    from service.tasks import TaskLoadError
    from training.base_model import ModelPrepareError
    from training.datasets import DatasetError

    try:
        card = main(args)
    except (DatasetError, TaskLoadError, ModelPrepareError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: card[k] for k in ("adapter", "steps", "train_loss", "best_eval_loss", "wall_time_s")}))  # noqa: T201


if __name__ == "__main__":
    cli()
