"""The answer-only output layer gives the standard loss and gradients (training, accumulation, evaluation) on a tiny
random Llama wrapped by peft; the CPU's batch defaults and their record in the card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("peft", reason="needs the [train] extra")

import torch  # noqa: E402

from backends.local.hardware import read_cpu  # noqa: E402
from tests.training.test_train import MESSAGES, strict_json, tiny_args, write_jsonl  # noqa: E402
from training.train import Encoded, Runtime, TrainArgs, build_trainer, load_model, main, resolve_batch  # noqa: E402

CPU = Runtime("cpu", "float32", read_cpu(), batch_size=2, grad_accum=1)
# (prompt, answer) lengths: different prompt lengths, and padding on the right of the shorter rows.
SHAPES = [(10, 4), (4, 5), (2, 4)]


def examples(vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for prompt, answer in SHAPES:
        ids = torch.randint(0, vocab, (prompt + answer,), generator=generator).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * prompt + ids[prompt:]})
    return out


def trainer_for(tiny_base: Path, tmp_path: Path, *, runtime: Runtime = CPU, **overrides: Any) -> Any:
    """A Trainer as training builds it (dropout 0 unless `overrides` say otherwise), over a model whose adapter is
    random (zero lora_B would leave lora_A's gradient zero, and the comparison trivial)."""
    args = tiny_args(tiny_base, {"train": Path("t"), "val": Path("v")}, tmp_path / "out",
                     **{"dropout": 0.0, **overrides})  # fmt: skip
    model, tokenizer = load_model(str(tiny_base), args, runtime)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    data = examples(len(tokenizer))
    return build_trainer(args, model, tokenizer, (Encoded(data), Encoded(data)), runtime, [])


def loss_and_grads(trainer: Any, num_items_in_batch: torch.Tensor | None) -> tuple[float, dict[str, torch.Tensor]]:
    model = trainer.model
    model.zero_grad()
    batch = trainer.data_collator(examples(model.config.vocab_size))
    loss = trainer.compute_loss(model, batch, num_items_in_batch=num_items_in_batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def trainers(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    tmp = tmp_path_factory.mktemp("trainers")
    return (trainer_for(tiny_base, tmp, answer_only_logits=False), trainer_for(tiny_base, tmp, answer_only_logits=True))


@pytest.mark.parametrize("accumulated", [None, 2], ids=["mean", "accumulation"])
def test_answer_only_loss_and_gradients_equal_the_full_logits_ones(
    trainers: tuple[Any, Any], accumulated: int | None
) -> None:
    full, answer_only = trainers
    assert type(full).__name__ == "Trainer" and type(answer_only).__name__ == "AnswerOnlyTrainer"
    assert answer_only.model_accepts_loss_kwargs  # so the Trainer passes the accumulated count
    # As the Trainer counts for gradient accumulation: answer tokens over all batches of the step (here twice ours).
    count = None if accumulated is None else torch.tensor(accumulated * sum(answer for _, answer in SHAPES))
    reference, reference_grads = loss_and_grads(full, count)
    loss, grads = loss_and_grads(answer_only, count)
    assert reference > 1  # a random model over 49k tokens: ~ln(49152) when not normalised by a larger count
    assert abs(loss - reference) <= 1e-5
    assert grads.keys() == reference_grads.keys() and any(n.endswith("lora_A.default.weight") for n in grads)
    for name, grad in grads.items():
        assert float(reference_grads[name].abs().max()) > 0, name
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_only_the_answer_rows_are_projected(trainers: tuple[Any, Any]) -> None:
    full, answer_only = trainers
    batch = full.data_collator(examples(full.model.config.vocab_size))
    vocab = full.model.config.vocab_size
    with torch.no_grad():
        assert full.compute_loss(full.model, batch, return_outputs=True)[1].logits.shape == (3, 14, vocab)
        ours = answer_only.compute_loss(answer_only.model, batch, return_outputs=True)[1]
    assert ours.logits.shape == (sum(answer for _, answer in SHAPES), vocab) and ours.hidden_states is None


def test_eval_loss_is_the_same(trainers: tuple[Any, Any]) -> None:
    full, answer_only = trainers
    reference, ours = full.evaluate()["eval_loss"], answer_only.evaluate()["eval_loss"]
    assert abs(ours - reference) <= 1e-5 and reference > 1


def test_a_model_whose_last_hidden_state_is_not_normalised_is_refused(tiny_base: Path, tmp_path: Path) -> None:
    trainer = trainer_for(tiny_base, tmp_path, answer_only_logits=True)
    trainer.model.config.tie_last_hidden_states = False  # hidden_states[-1] is then the last layer's, before the norm
    batch = trainer.data_collator(examples(trainer.model.config.vocab_size))
    with pytest.raises(RuntimeError, match="answer_only_logits false"):
        trainer.compute_loss(trainer.model, batch)


def test_a_run_with_answer_only_logits_matches_full_logits_and_writes_a_valid_card(
    tiny_base: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    data = {"train": write_jsonl(tmp_path / "train.jsonl", MESSAGES * 2),
            "val": write_jsonl(tmp_path / "val.jsonl", MESSAGES[:3])}  # fmt: skip
    cards = {}
    for flag in (False, True):
        out = tmp_path / f"adapter-{flag}"
        args = tiny_args(tiny_base, data, out, max_steps=2, grad_accum=2, dropout=0.0, eval_samples=0,
                         answer_only_logits=flag)  # fmt: skip
        cards[flag] = main(args)
        assert strict_json(out / "training_card.json") == cards[flag]
    card = cards[True]
    assert card["adapter"] and card["steps"] == 2 and card["stopped_early"] is None
    assert card["hyperparameters"].items() >= {"answer_only_logits": True, "batch_size": 2, "grad_accum": 2}.items()
    assert "batch 2 x accumulation 2" in (tmp_path / "adapter-True" / "training_card.md").read_text()
    # fp32 (this CPU) agrees to rounding; bf16 kernels (a GPU) round differently for other shapes.
    tolerance = 1e-5 if card["dtype"] == "float32" else 2e-2
    assert abs(card["best_eval_loss"] - cards[False]["best_eval_loss"]) <= tolerance
    assert abs(card["train_loss"] - cards[False]["train_loss"]) <= max(tolerance, 1e-4)  # rounded to 4 places
    ours, reference = (load_file(str(tmp_path / f"adapter-{f}" / "adapter_model.safetensors")) for f in (True, False))
    for name, weight in ours.items():
        torch.testing.assert_close(weight, reference[name], rtol=1e-4, atol=max(tolerance, 1e-5), msg=name)


def test_batch_defaults_fit_the_device_unless_set() -> None:
    args = TrainArgs(task="t", train=Path("t.jsonl"))
    assert (args.batch_size, args.grad_accum, args.max_length, args.answer_only_logits) == (None, None, 1024, True)
    assert resolve_batch("cpu", None, None) == (4, 2)  # the GPU's effective batch of 8, under half its peak memory
    assert resolve_batch("cuda", None, None) == (8, 1)
    assert resolve_batch("cpu", 4, None) == (4, 1)  # a batch set alone is what runs, as before
    assert resolve_batch("cpu", None, 3) == (4, 3) and resolve_batch("cuda", 2, 4) == (2, 4)
