"""LoRA training end to end on a tiny random Llama (seconds on a CPU): artefacts and card, length-grouped batches,
and the guard that stops a run whose loss turns NaN and keeps the good weights."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("peft", reason="needs the [train] extra")

from transformers import TrainerCallback  # noqa: E402

from backends.local.hardware import read_cpu  # noqa: E402
from service.config import DEFAULT_CONFIG  # noqa: E402
from service.tasks import load_tasks  # noqa: E402
from training.callbacks import generate_outputs  # noqa: E402
from training.datasets import Record  # noqa: E402
from training.train import Encoded, Runtime, TrainArgs, build_trainer, check_args, load_model, main  # noqa: E402

TASK = load_tasks(DEFAULT_CONFIG.parent / "tasks")["support_intent"]
MESSAGES = [
    ("Where is my new card?", "card_arrival"),
    ("How do I link the card I already have?", "card_linking"),
    ("Which exchange rate do you use?", "exchange_rate"),
    ("Someone stole my card last night", "lost_or_stolen_card"),
]
CPU = Runtime("cpu", "float32", read_cpu())


def strict_json(path: Path) -> Any:
    """The file as JSON, failing on the bare NaN / Infinity that Python's json module accepts by default."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path.name} holds a bare {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def write_jsonl(path: Path, records: list[tuple[str, str]]) -> Path:
    rows = [{"id": str(i), "text": text, "output": {"intent": intent}} for i, (text, intent) in enumerate(records)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    too_long = ("please help " * 300, "card_arrival")
    return {"train": write_jsonl(tmp_path / "train.jsonl", [*MESSAGES, too_long]),
            "val": write_jsonl(tmp_path / "val.jsonl", MESSAGES[:2])}  # fmt: skip


def tiny_args(base: Path, data: dict[str, Path], out: Path, **overrides: Any) -> TrainArgs:
    defaults: dict[str, Any] = dict(task="support_intent", train=data["train"], val=data["val"], out=out,
                                    base_model=str(base), batch_size=2, max_length=256, eval_samples=2, r=4, alpha=8,
                                    logging_steps=1)  # fmt: skip
    return TrainArgs(**{**defaults, **overrides})


def adapter_weights(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


class PoisonFrom(TrainerCallback):
    """From step `step` on the embeddings come out infinite, so the loss is NaN, as in a run that diverged."""

    def __init__(self, step: int) -> None:
        self.step, self.hooked = step, False

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step + 1 >= self.step and not self.hooked:
            model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output * float("inf"))
            self.hooked = True


def test_a_clean_run_writes_adapter_card_and_curve(tiny_base: Path, data: dict[str, Path], tmp_path: Path) -> None:
    import torch

    out = tmp_path / "adapter"
    card = main(tiny_args(tiny_base, data, out, max_steps=2))
    for name in ("adapter_model.safetensors", "adapter_config.json", "training_card.json", "training_card.md",
                 "loss.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    assert strict_json(out / "training_card.json") == card
    assert card["steps"] == 2 and card["stopped_early"] is None
    assert card["data"]["train"] | {"file": None, "sha256": None} == {
        "file": None, "sha256": None, "records": 5, "used": 4, "skipped_too_long": 1, "skipped_no_answer": 0,
    }  # fmt: skip
    assert card["validation"] and "field_f1" in card["validation"][-1]
    assert card["hyperparameters"]["group_by_length"] is True
    assert card["throughput"]["s_per_step"] > 0 and card["throughput"]["tokens_per_s"] > 0
    lora = adapter_weights(out)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())
    assert all(v.dtype == torch.float32 for v in lora.values())


def test_a_nan_loss_stops_training_and_keeps_the_best_checkpoint(
    tiny_base: Path, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    out = tmp_path / "adapter"
    # 4 usable records in batches of 2: an epoch is 2 steps, evaluated and saved as checkpoint-2; step 3 goes NaN.
    card = main(tiny_args(tiny_base, data, out, epochs=3), callbacks=[PoisonFrom(step=3)])
    assert "training stopped at step 3: non-finite loss (nan)" in capsys.readouterr().err
    assert card["stopped_early"] == {"reason": "non-finite loss", "step": 3, "value": "nan", "kept": "checkpoint-2"}
    assert card["steps"] == 3 and card["best_checkpoint"] == "checkpoint-2"
    assert [v["step"] for v in card["validation"]] == [2]  # the broken weights were neither evaluated nor saved
    written = strict_json(out / "training_card.json")
    assert written["stopped_early"] == card["stopped_early"] and written["train_loss"] is None  # NaN became null
    assert "stopped early" in (out / "training_card.md").read_text()
    assert all(bool(torch.isfinite(v).all()) for v in adapter_weights(out).values())
    assert not (out / "checkpoints").exists()


def test_without_validation_the_last_finite_weights_are_kept(
    tiny_base: Path, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    out = tmp_path / "adapter"
    card = main(tiny_args(tiny_base, data, out, val=None, max_steps=6), callbacks=[PoisonFrom(step=3)])
    assert card["stopped_early"] == {"reason": "non-finite loss", "step": 3, "value": "nan", "kept": "step-2"}
    assert "kept: step-2" in capsys.readouterr().err
    lora = adapter_weights(out)
    assert all(bool(torch.isfinite(v).all()) for v in lora.values())
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())


def test_nothing_finite_to_keep_writes_the_card_but_no_adapter(
    tiny_base: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    card = main(tiny_args(tiny_base, data, out, val=None, max_steps=4), callbacks=[PoisonFrom(step=1)])
    assert card["adapter"] is None and card["stopped_early"]["kept"] is None
    assert not (out / "adapter_model.safetensors").exists()
    assert strict_json(out / "training_card.json")["stopped_early"]["step"] == 1


def test_gradient_checkpointing_trains_the_adapter(tiny_base: Path, data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    card = main(tiny_args(tiny_base, data, out, val=None, max_steps=2, gradient_checkpointing=True))
    assert card["steps"] == 2 and card["hyperparameters"]["gradient_checkpointing"] is True
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter_weights(out).items())


def test_a_second_stage_continues_the_adapter_it_is_given(
    tiny_base: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    first = tmp_path / "stage1"
    main(tiny_args(tiny_base, data, first, val=None, max_steps=2, r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    # learning rate 0: stage 2 must hand back stage 1's weights exactly, so they were its starting point
    second = tmp_path / "stage2"
    card = main(tiny_args(tiny_base, data, second, val=None, max_steps=1, learning_rate=0.0, init_adapter=first,
                          r=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))  # fmt: skip
    before, after = adapter_weights(first), adapter_weights(second)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    hp = card["hyperparameters"]  # the adapter's own settings, not the ignored flags
    assert (hp["r"], hp["alpha"], hp["target_modules"], hp["init_adapter"]) == (4, 8, ["q_proj", "v_proj"], str(first))
    # and with a learning rate it trains them: they move (3 steps: the first is warm-up, at rate 0)
    moved = tmp_path / "stage2b"
    main(tiny_args(tiny_base, data, moved, val=None, max_steps=3, learning_rate=1e-2, init_adapter=first))
    assert any(not torch.equal(before[k], v) for k, v in adapter_weights(moved).items())
    with pytest.raises(OSError, match="no adapter_config.json"):
        main(tiny_args(tiny_base, data, tmp_path / "x", val=None, max_steps=1, init_adapter=tmp_path))
    config = json.loads((first / "adapter_config.json").read_text())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps({**config, "r": None}))
    with pytest.raises(OSError, match="no r in it"):
        main(tiny_args(tiny_base, data, tmp_path / "y", val=None, max_steps=1, init_adapter=tmp_path / "bad"))


def padding_in_batches(tiny_base: Path, data: dict[str, Path], tmp_path: Path, group_by_length: bool) -> int:
    """Padded positions over one epoch of 64 examples, half 8 tokens long and half 64, in batches of 4."""
    args = tiny_args(tiny_base, data, tmp_path / "unused", val=None, batch_size=4, group_by_length=group_by_length)
    model, tokenizer = load_model(str(tiny_base), args, CPU)
    examples = []
    for i in range(64):
        n = 8 if i % 2 else 64
        examples.append({"input_ids": [1] * n, "attention_mask": [1] * n, "labels": [1] * n})
    trainer = build_trainer(args, model, tokenizer, (Encoded(examples), Encoded([])), replace(CPU, batch_size=4), [])
    return sum(int((batch["attention_mask"] == 0).sum()) for batch in trainer.get_train_dataloader())


def test_length_grouping_is_on_by_default_and_cuts_padding(
    tiny_base: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    assert TrainArgs(task="t", train=Path("t.jsonl")).group_by_length is True
    grouped = padding_in_batches(tiny_base, data, tmp_path, group_by_length=True)
    shuffled = padding_in_batches(tiny_base, data, tmp_path, group_by_length=False)
    assert grouped * 2 < shuffled


def test_generation_for_validation_leaves_training_padding_on_the_right(tiny_base: Path, data: dict[str, Path]) -> None:
    # Left padding leaking into training batches gave fully masked attention rows: NaN gradients on CUDA.
    model, tokenizer = load_model(str(tiny_base), tiny_args(tiny_base, data, Path("unused")), CPU)
    records = [Record(str(i), text, {"intent": intent}) for i, (text, intent) in enumerate(MESSAGES[:2])]
    assert len(generate_outputs(model, tokenizer, TASK, records)) == 2
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"dropout": 1.0}, "--dropout must be in [0, 1), got 1.0"), ({"dropout": -0.1}, "--dropout must be in [0, 1)"),
     ({"r": 0}, "--r must be at least 1"), ({"learning_rate": -1.0}, "--learning_rate must be 0"),
     ({"epochs": 0.0}, "--epochs must be positive"), ({"batch_size": 0}, "--batch_size must be at least 1"),
     ({"eval_samples": -1}, "--eval_samples must be 0"), ({"max_grad_norm": -1.0}, "--max_grad_norm must be 0"),
     ({"limit": -3}, "--limit must be at least 1"), ({"dtype": "bogus"}, "--dtype must be one of auto")],
)  # fmt: skip
def test_an_argument_out_of_range_is_refused_before_anything_loads(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    args = tiny_args(tmp_path / "no-model", {"train": tmp_path / "missing.jsonl", "val": None}, tmp_path / "out",
                     **overrides)  # fmt: skip
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(args)
    assert not (tmp_path / "out").exists()
    check_args(replace(args, **{k: TrainArgs.__dataclass_fields__[k].default for k in overrides}))  # defaults pass


def test_an_output_that_cannot_be_written_is_refused_before_anything_loads(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    for out, message in [(tmp_path / "a-file", "is a file; give a folder"),
                         (tmp_path / "a-file" / "adapter", "is a file, so the folder cannot be made"),
                         (Path("/proc/adapter"), "cannot write in /proc")]:  # fmt: skip
        args = tiny_args(tmp_path / "no-model", {"train": tmp_path / "missing.jsonl", "val": None}, out)
        with pytest.raises(SystemExit, match=re.escape(message)):
            main(args)  # was found after trainer.train(): an hour of training lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # the probe left nothing


def test_the_command_line_and_config_file_errors_are_usage_errors(tmp_path: Path, capsys: Any) -> None:
    from training.train import parse_argv, parse_config_file

    with pytest.raises(SystemExit) as e:
        parse_argv(["--task", "t", "--train", "x.jsonl", "--bogus", "1"])
    assert e.value.code == 2 and "extraction train: error: " in capsys.readouterr().err
    config = tmp_path / "train.yaml"
    for content, message in [("epochs: 1\n", "task, train missing"), ("- a\n", "must be a mapping"),
                             ("task: t\ntrain: x\nbogus: 1\n", "unknown argument(s) bogus"),
                             ("task: [unclosed", "cannot be read as YAML")]:  # fmt: skip
        config.write_text(content)
        with pytest.raises(SystemExit, match=re.escape(message)):
            parse_config_file(config)
    with pytest.raises(SystemExit, match="cannot be read as YAML"):
        parse_config_file(tmp_path / "missing.yaml")
    config.write_text("task: receipt\ntrain: data/t.jsonl\nr: 8\ngroup_by_length: false\nbatch_size: null\n"
                      "target_modules: [q_proj, v_proj]\nlearning_rate: 1.0e-4\n")  # fmt: skip
    args = parse_config_file(config)  # the same types as the command line gives (Paths were str before)
    assert args.train == Path("data/t.jsonl") and args.r == 8 and args.group_by_length is False
    assert args.target_modules == ["q_proj", "v_proj"] and args.learning_rate == 1e-4 and args.batch_size is None
