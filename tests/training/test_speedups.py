"""The step's savings: the fast dropout is dropout, the dropped padding mask changes no loss or gradient (and is
kept for a model where it would), and the bf16 CPU autocast trains fp32 adapter weights through a bf16 base."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("peft", reason="needs the [train] extra")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tests.training.test_loss import CPU, examples, loss_and_grads, trainer_for  # noqa: E402
from tests.training.test_train import MESSAGES, strict_json, tiny_args, write_jsonl  # noqa: E402
from training.speedups import FastDropout, StepSpeedups, right_padded, use_fast_dropout  # noqa: E402
from training.train import Encoded, Runtime, build_trainer, load_model, main  # noqa: E402


def test_fast_dropout_zeroes_with_its_probability_and_keeps_the_expectation() -> None:
    drop = FastDropout(0.05)
    assert drop.p == round(0.05 * 32768) / 32768 and abs(drop.p - 0.05) < 1 / 32768
    x = torch.full((999, 1001), 3.0)  # odd element count: the last 16-bit field is unpaired
    torch.manual_seed(0)
    out = drop.train()(x)
    zeroed = float((out == 0).float().mean())
    sigma = (drop.p * (1 - drop.p) / x.numel()) ** 0.5
    assert abs(zeroed - drop.p) < 5 * sigma
    assert out.unique().tolist() == [0.0, pytest.approx(3.0 / (1 - drop.p))]
    assert abs(float(out.mean()) - 3.0) < 5 * 3.0 * sigma / (1 - drop.p)
    # Fresh mask per call, repeatable from the seed; identity in eval.
    again = drop(x)
    assert not torch.equal(out, again)
    torch.manual_seed(0)
    assert torch.equal(drop(x), out)
    assert drop.eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FastDropout(1.0)


@pytest.mark.parametrize("p", [0.5, 0.05])
def test_fast_dropout_masks_are_independent_across_positions(p: float) -> None:
    """Neighbours (the two 16-bit halves of one random draw) are dropped independently of each other."""
    torch.manual_seed(1)
    drop = FastDropout(p).train()
    dropped = (drop(torch.ones(4_000_000)) == 0).float()
    both = float((dropped[0::2] * dropped[1::2]).mean())
    expected = drop.p**2
    assert abs(both - expected) < 5 * (expected * (1 - expected) / 2_000_000) ** 0.5


def test_fast_dropout_probabilities_at_the_edges() -> None:
    assert FastDropout(1e-9).cut == 1  # a small p still drops (1/32768), never silently nothing
    nearly_all = FastDropout(1 - 1e-9)
    assert nearly_all.cut == 32767 and nearly_all.scale == 32768.0
    x = torch.ones(10_000)
    assert FastDropout(1e-9).train()(x).shape == x.shape


def test_fast_dropout_gradient_is_the_mask_times_the_scale() -> None:
    drop = FastDropout(0.3).train()
    x = torch.randn(64, 33, dtype=torch.bfloat16, requires_grad=True)
    out = drop(x)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert x.grad is not None
    expected = (out != 0).to(torch.bfloat16) * drop.scale
    torch.testing.assert_close(x.grad, expected)  # x is never exactly 0, so out is 0 exactly where dropped


def test_the_lora_dropouts_are_replaced(tiny_base: Path, tmp_path: Path) -> None:
    args = tiny_args(tiny_base, {"train": Path("t"), "val": Path("v")}, tmp_path / "out", dropout=0.1,
                     fast_dropout=False)  # fmt: skip
    model, _ = load_model(str(tiny_base), args, CPU)
    before = sum(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    assert before > 0 and use_fast_dropout(model) == before
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == before
    assert model.peft_config["default"].lora_dropout == 0.1  # what is saved is unchanged
    # load_model does it itself on a CPU when asked (the default).
    model, _ = load_model(str(tiny_base), tiny_args(tiny_base, {"train": Path("t"), "val": Path("v")},
                          tmp_path / "out", dropout=0.1), CPU)  # fmt: skip
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == before


@pytest.mark.parametrize(
    ("rows", "expected"),
    [([[1, 1, 1], [1, 1, 0]], True), ([[1, 1, 1]], True), ([[0, 1, 1]], False), ([[1, 0, 1]], False),
     ([[1, 1], [0, 0]], False)],
    ids=["right", "unpadded", "left", "hole", "empty-row"],
)  # fmt: skip
def test_right_padding_is_recognised(rows: list[list[int]], expected: bool) -> None:
    assert right_padded(torch.tensor(rows)) is expected


def test_dropping_the_padding_mask_changes_no_loss_or_gradient(tiny_base: Path, tmp_path: Path) -> None:
    masked, dropped = (trainer_for(tiny_base, tmp_path / str(drop), drop_padding_mask=drop) for drop in (False, True))
    batch = masked.data_collator(examples(masked.model.config.vocab_size))
    assert right_padded(batch["attention_mask"]) and not bool(batch["attention_mask"].all())
    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(masked, None), loss_and_grads(dropped, None)
    assert dropped.padding_mask_checked is True and masked.padding_mask_checked is None
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6, msg=name)


class Sees:
    """A fake model whose states at every position depend on the mask: what a model that attends to the right
    (bidirectional, or prefix attention) looks like to the check."""

    training = True

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def eval(self) -> None:
        self.training = False

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> Any:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        total = (input_ids * mask).sum(dim=1, keepdim=True).float()
        return SimpleNamespace(hidden_states=[total[:, :, None].expand(*input_ids.shape, 1)])

    def get_base_model(self) -> Any:
        return self

    def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
        return self(input_ids, attention_mask)


class Base:
    """Records what reaches the Trainer's compute_loss."""

    def __init__(self, **_: Any) -> None:
        self.seen: list[dict[str, Any]] = []

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(inputs)
        return torch.tensor(0.0)


class Probe(StepSpeedups, Base):
    pass


def test_a_model_that_looks_right_keeps_its_mask(capsys: pytest.CaptureFixture[str]) -> None:
    probe = Probe()
    padded = {"input_ids": torch.tensor([[5, 6, 7], [5, 6, 9]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    probe.compute_loss(Sees(), padded)
    probe.compute_loss(Sees(), padded)
    assert probe.padding_mask_checked is False
    assert all("attention_mask" in seen for seen in probe.seen)
    assert capsys.readouterr().err.count("keeping the mask") == 1  # checked once, said once
    # An unpadded batch needs no check: its mask is all ones, and the model treats that as none.
    fresh = Probe()
    fresh.compute_loss(Sees(), {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.tensor([[1, 1]])})
    assert "attention_mask" not in fresh.seen[0] and fresh.padding_mask_checked is None


def test_bf16_cpu_autocast_trains_fp32_adapter_weights_through_a_bf16_base(tiny_base: Path, tmp_path: Path) -> None:
    runtime = Runtime("cpu", "bfloat16", CPU.cpu, batch_size=2, grad_accum=1)
    args = tiny_args(tiny_base, {"train": Path("t"), "val": Path("v")}, tmp_path / "out", dropout=0.1)
    model, tokenizer = load_model(str(tiny_base), args, runtime)
    data = examples(len(tokenizer))
    trainer = build_trainer(args, model, tokenizer, (Encoded(data), Encoded(data)), runtime, [])
    assert trainer.cpu_autocast is True
    batch = trainer.data_collator(data)
    # What reaches the adapter: bf16 inside the loss (no cast to the fp32 weights), fp32 outside (peft's cast).
    lora_a = next(m for name, m in model.named_modules() if name.endswith("lora_A.default"))
    seen: list[torch.dtype] = []
    hook = lora_a.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
    with trainer.compute_loss_context_manager():
        assert torch.is_autocast_enabled("cpu")
        loss = trainer.compute_loss(model, batch)
    loss.backward()
    assert seen and set(seen) == {torch.bfloat16}
    adapter = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert adapter and all(p.dtype == torch.float32 and p.grad is not None for p in adapter.values())
    assert all(bool(torch.isfinite(p.grad).all()) for p in adapter.values())
    # Outside the loss (generation in the callbacks) peft casts the inputs to the adapter's dtype as usual.
    layer = next(m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    assert layer.cast_input_dtype_enabled is True
    model.eval()
    seen.clear()
    with torch.no_grad():
        assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "labels"}).logits).all()
    assert set(seen) == {torch.float32}
    hook.remove()


def test_a_run_with_the_speedups_matches_one_without_and_says_so_in_its_card(tiny_base: Path, tmp_path: Path) -> None:
    data = {"train": write_jsonl(tmp_path / "train.jsonl", MESSAGES * 2),
            "val": write_jsonl(tmp_path / "val.jsonl", MESSAGES[:3])}  # fmt: skip
    cards = {}
    for flag in (False, True):
        out = tmp_path / f"adapter-{flag}"
        args = tiny_args(tiny_base, data, out, max_steps=2, dropout=0.0, eval_samples=0, drop_padding_mask=flag,
                         fast_dropout=flag, cpu_autocast=flag)  # fmt: skip
        cards[flag] = main(args)
        assert strict_json(out / "training_card.json") == cards[flag]
    on, off = cards[True]["speedups"], cards[False]["speedups"]
    assert on["fast_dropout_layers"] == 0  # dropout 0 here, so the runs can be compared; see below
    assert on["drop_padding_mask"] is True and on["padding_mask_check"] is True
    assert off == {"fast_dropout_layers": 0, "fast_dropout_p": None, "cpu_autocast": False,
                   "drop_padding_mask": False, "padding_mask_check": None}  # fmt: skip
    assert on["cpu_autocast"] is (cards[True]["dtype"] == "bfloat16")
    tolerance = 1e-5 if cards[True]["dtype"] == "float32" else 2e-2
    assert abs(cards[True]["best_eval_loss"] - cards[False]["best_eval_loss"]) <= tolerance


def test_a_run_with_dropout_uses_the_fast_one_on_a_cpu(tiny_base: Path, tmp_path: Path) -> None:
    data = {"train": write_jsonl(tmp_path / "train.jsonl", MESSAGES * 2), "val": write_jsonl(tmp_path / "v.jsonl", [])}
    card = main(tiny_args(tiny_base, data, tmp_path / "out", max_steps=1, dropout=0.1, eval_samples=0, val=None))
    adapted = 2 * 4  # layers x the default targets (q, k, v, o)
    assert card["speedups"]["fast_dropout_layers"] == adapted
    assert card["speedups"]["fast_dropout_p"] == round(0.1 * 32768) / 32768
    assert card["hyperparameters"]["dropout"] == 0.1
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["lora_dropout"] == 0.1


def test_dropping_the_padding_mask_in_bf16_changes_the_loss_by_rounding_only(tiny_base: Path, tmp_path: Path) -> None:
    runtime = Runtime("cpu", "bfloat16", CPU.cpu, batch_size=2, grad_accum=1)
    losses = []
    for drop in (False, True):
        trainer = trainer_for(tiny_base, tmp_path / str(drop), runtime=runtime, drop_padding_mask=drop)
        batch = trainer.data_collator(examples(trainer.model.config.vocab_size))
        with trainer.compute_loss_context_manager():
            losses.append(float(trainer.compute_loss(trainer.model, batch).detach()))
        assert trainer.padding_mask_checked is (True if drop else None)
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
