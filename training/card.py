"""The training card: JSON (strict: no NaN or Infinity), Markdown, and the loss curve beside it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so the card is JSON any parser reads
    (json.dumps would write bare NaN / Infinity, which strict parsers and `jq` reject)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_card(card: dict[str, Any], out: Path) -> None:
    """training_card.json and training_card.md in `out`."""
    # allow_nan=False: a non-finite float that json_safe missed fails here instead of writing invalid JSON.
    (out / "training_card.json").write_text(json.dumps(json_safe(card), indent=2, allow_nan=False))
    (out / "training_card.md").write_text(card_markdown(json_safe(card)))


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    """Train and validation loss against the step, from the Trainer's log history."""
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


def _number(value: Any, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def card_markdown(card: dict[str, Any]) -> str:
    """The card for people: data, hyper-parameters, outcome, the validation table and the loss curve."""
    rows = "\n".join(
        f"| {m['epoch']:.2f} | {m['step']} | {_number(m.get('eval_loss'))} | {m.get('field_f1', '-')} | "
        f"{m.get('exact_match', '-')} | {m.get('json_rate', '-')} |"
        for m in card["validation"]
    )
    hp = card["hyperparameters"]
    train, val = card["data"]["train"], card["data"]["val"]
    val_line = f"`{val['file']}` ({val['records']} records), sha256 `{val['sha256']}`" if val else "none"
    targets = ", ".join(hp["target_modules"])
    stop = card.get("stopped_early")
    stop_line = (f"- **stopped early** at step {stop['step']}: {stop['reason']} ({stop['value']}); "
                 f"kept: {stop['kept'] or 'nothing, no adapter written'}\n" if stop else "")  # fmt: skip
    speed = card.get("throughput") or {}
    return f"""# Training card: `{card["task"]}` LoRA adapter

- base model: `{card["base_model"]}`; prompt style: `finetuned` (short prompt, no examples)
- train: `{train["file"]}` ({train["used"]} of {train["records"]} records used), sha256 `{train["sha256"]}`
- validation: {val_line}
- LoRA r={hp["r"]} alpha={hp["alpha"]} dropout={hp["dropout"]} targets={targets}
- learning rate {hp["learning_rate"]}, batch {hp["batch_size"]} x accumulation {hp["grad_accum"]}, \
epochs {hp["epochs"]}, max steps {hp["max_steps"]}, max grad norm {hp.get("max_grad_norm")}, seed {hp["seed"]}
- steps {card["steps"]}, final train loss {card["train_loss"]}, best validation loss {card["best_eval_loss"]} \
({card["best_checkpoint"]})
{stop_line}- wall time {card["wall_time_s"]} s on {card["device"]} in {card.get("dtype", "bfloat16")}; \
{_number(speed.get("s_per_step"), ".2f")} s/step, {_number(speed.get("tokens_per_s"), ".0f")} tokens/s

| epoch | step | validation loss | field F1 | exact match | JSON rate |
|---|---|---|---|---|---|
{rows}

![loss curve](loss.png)
"""
