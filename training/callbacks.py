"""Trainer callbacks: validation field-F1 after each evaluation, and the guard that stops a run gone non-finite.

Importing this module imports transformers (the callbacks subclass `TrainerCallback`); train.py imports it lazily.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from service.parsing import OutputNotJSON, parse_output
from service.prompts import build_messages
from service.tasks import Task
from training.datasets import Record
from training.lora import all_finite, trainable_state
from training.metrics import Scores

# What the Trainer logs that must stay finite: the train loss (mean over the logging window), the gradient norm of
# the last step, the validation loss and the whole run's mean loss (which also covers steps after the last log).
WATCHED = ("loss", "grad_norm", "eval_loss", "train_loss")


def is_finite(value: Any) -> bool:
    """False for NaN and ±inf; True for any other number; None (not measured) counts as finite."""
    return value is None or not isinstance(value, float | int) or math.isfinite(value)


def generate_outputs(model: Any, tokenizer: Any, task: Task, records: list[Record], batch: int = 8) -> list[Any]:
    """Greedy answers for `records` (None where the text is not JSON); for validation field-F1."""
    import torch

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
            # Left padding for generation, asked per call: setting `tokenizer.padding_side` (as this code once did)
            # leaks into the training collator, so every batch after the first validation was left-padded: positions
            # shifted against inference, and fully masked attention rows, which some CUDA attention kernels turn
            # into NaN (not reproduced on a CPU). A likely cause of the "epoch 2: loss 0, grad_norm nan" runs.
            enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=False).to(model.device)  # fmt: skip
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
    """Per-field precision/recall/F1, exact match and the share of answers that were JSON objects."""
    fields = [f for f in task.json_schema.get("properties", {}) if f not in task.eval_ignore]
    scores = Scores()
    for record, pred in zip(records, predictions, strict=True):
        scores.add(record.output, pred if isinstance(pred, dict) else None, fields)
    out = scores.as_dict()
    out["json_rate"] = round(sum(isinstance(p, dict) for p in predictions) / max(1, len(predictions)), 4)
    return out


class FieldF1(TrainerCallback):
    """After each evaluation, greedy answers for a few validation records scored per field; `history` is the
    card's validation table."""

    def __init__(self, task: Task, tokenizer: Any, records: list[Record]) -> None:
        self.task, self.tokenizer, self.records = task, tokenizer, records
        self.history: list[dict[str, Any]] = []

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        eval_loss = (metrics or {}).get("eval_loss")
        entry: dict[str, Any] = {"epoch": state.epoch, "step": state.global_step, "eval_loss": eval_loss}
        # Non-finite weights only generate noise, and slowly: no EOS ever comes, so every answer runs to the limit.
        if self.records and is_finite(eval_loss):
            predictions = generate_outputs(kwargs["model"], self.tokenizer, self.task, self.records)
            scores = field_scores(self.task, self.records, predictions)
            entry.update(field_f1=scores["field_micro"]["f1"], exact_match=scores["exact_match"],
                         json_rate=scores["json_rate"])  # fmt: skip
        self.history.append(entry)
        print(f"validation after epoch {state.epoch:.2f}: {entry}", file=sys.stderr)  # noqa: T201


class NonFiniteGuard(TrainerCallback):
    """Stops training at the first non-finite loss, grad_norm, eval_loss or adapter weight, and keeps good weights.

    One NaN step poisons every trainable weight through the optimizer, and all later steps are wasted. What is kept:
    the best checkpoint when validation ran (`load_best_model_at_end` restores it before `on_train_end`), else the
    adapter weights of the last log at which everything was finite (an adapter-sized copy held in memory).
    `stopped` is None for a clean run, else {"reason", "step", "value", "kept"} for the training card.
    """

    def __init__(self) -> None:
        self.stopped: dict[str, Any] | None = None
        self._last_good: dict[str, Any] | None = None
        self._last_good_step = 0

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, model: Any = None, **kw: Any) -> None:
        if self.stopped is not None:
            return
        bad = next(((k, v) for k, v in (logs or {}).items() if k in WATCHED and not is_finite(v)), None)
        if bad is None and model is not None:
            weights = trainable_state(model)
            if all_finite(weights.values()):
                self._last_good = {name: w.detach().clone() for name, w in weights.items()}
                self._last_good_step = state.global_step
                return
            bad = ("adapter weights", float("nan"))
        if bad is not None:
            self._stop(f"non-finite {bad[0]}", state.global_step, bad[1], control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The epoch loop breaks on `should_training_stop`, then the default flow asks for the epoch's evaluation
        # and checkpoint: of weights already known to be broken. This callback runs after that one and says no.
        if self.stopped is not None:
            control.should_evaluate = control.should_save = False

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and self.stopped is None and not all_finite(trainable_state(model).values()):
            self._stop("non-finite adapter weights", state.global_step, float("nan"), control)
        if self.stopped is None:
            return
        if args.load_best_model_at_end and state.best_model_checkpoint:
            self.stopped["kept"] = Path(state.best_model_checkpoint).name
        elif self._last_good is not None and model is not None:
            self._restore(model)
            self.stopped["kept"] = f"step-{self._last_good_step}"
        kept = self.stopped["kept"]
        print(f"kept: {kept}" if kept else "kept: nothing (no finite weights to fall back on)", file=sys.stderr)  # noqa: T201

    def _stop(self, reason: str, step: int, value: Any, control: Any) -> None:
        self.stopped = {"reason": reason, "step": step, "value": str(value), "kept": None}
        control.should_training_stop = True
        control.should_save = control.should_evaluate = False
        print(f"training stopped at step {step}: {reason} ({value}); lower the learning rate or check the data",  # noqa: T201
              file=sys.stderr)  # fmt: skip

    def _restore(self, model: Any) -> None:
        import torch

        assert self._last_good is not None
        weights = trainable_state(model)
        with torch.no_grad():
            for name, saved in self._last_good.items():
                weights[name].copy_(saved)


class StepTimer(TrainerCallback):
    """Time spent in optimizer steps only (forward, backward, update): logging, evaluation and saving left out."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._began = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._began = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds += time.perf_counter() - self._began
        self.steps += 1

    @property
    def s_per_step(self) -> float | None:
        return round(self.seconds / self.steps, 3) if self.steps else None

    def tokens_per_s(self, state: Any) -> float | None:
        """Non-padding tokens per second of step time (padding computed but not counted)."""
        return round(state.num_input_tokens_seen / self.seconds, 1) if self.seconds else None
