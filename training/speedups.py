"""Three savings in a LoRA training step, each the same loss or the standard mixed-precision recipe.

Profiled on 2 cores of an AMX Xeon (bf16, the receipt recipe's batch of the four longest receipts, 4 x 1,001
positions, `torch.profiler`), a step spent 21% in `bernoulli_` (LoRA dropout draws one random number per input
element, for each of the 210 adapted layers), 21% + 6% in attention, 11% in dtype copies (peft casts every bf16
input to the fp32 adapter weights' dtype) and only 16% in matrix products. Here:

- `FastDropout`: inverted dropout whose mask comes from 15-bit fields of `random_()`'s 31-bit integers: a quarter
  of the random draws and a cheaper kernel, about 5x faster on a CPU. The probability is rounded to a multiple of
  1/32768 (0.05 -> 0.049988) and the scale is that probability's, so the expectation stays exact. Used on a CPU
  (a GPU's bernoulli is cheap).
- `cpu_autocast`: on a bf16 CPU the LoRA branch computes in bf16 under `torch.autocast` (the adapter weights and
  the optimizer state stay fp32, as in bf16 training on a GPU), instead of casting each input to fp32.
- Right-padded batches run without their attention mask. Causal attention never looks right, so the positions that
  are learned see exactly what they saw with the mask, and the padded ones carry no label; without a mask the
  attention kernel runs causal and skips the blocks above the diagonal instead of computing and masking them. The
  first right-padded batch is checked both ways (the hidden states at its unpadded positions must agree); a model
  that does not agree keeps its mask, with a line on stderr.

Importing this module imports torch; train.py imports it lazily.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
from torch import nn

LEVELS = 1 << 15  # a 15-bit field per mask element


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, keeping the 0/1 mask (uint8: one byte an element) for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


class FastDropout(nn.Module):
    """`nn.Dropout(p)` with p rounded to a multiple of 1/32768 and a mask from 15-bit random fields: each element
    is zeroed with probability `self.p` independently, the kept ones scaled by 1/(1 - `self.p`); identity in eval.
    Draws from torch's default generator, so `torch.manual_seed` makes it repeatable."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        # At least one level for any p > 0 (no silent "no dropout"), at most LEVELS - 1 (a finite scale).
        self.cut = min(max(round(p * LEVELS), 1 if p > 0 else 0), LEVELS - 1)
        self.p = self.cut / LEVELS
        self.scale = 1.0 / (1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        n = x.numel()
        # random_() on int32 draws uniformly from [0, 2**31): both 16-bit halves of each draw hold 15 uniform,
        # independent bits below their top bit.
        bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_()
        # One byte an element; as uint8 (the same bytes as the bool) the products run ~1.7x faster than with a bool.
        keep = (bits.view(torch.int16)[:n] & (LEVELS - 1)).ge(self.cut).view(torch.uint8).view(x.shape)
        out: torch.Tensor = _MaskedScale.apply(x, keep, self.scale)  # type: ignore[no-untyped-call]
        return out

    def extra_repr(self) -> str:
        return f"p={self.p:.6f}"


def use_fast_dropout(model: Any) -> int:
    """Replace every LoRA layer's `nn.Dropout` with a `FastDropout` of (almost) the same p; returns how many.
    The adapter's saved config keeps its `lora_dropout`: nothing of this is saved."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, layer in list(dropouts.items()):
            if type(layer) is nn.Dropout and layer.p > 0:
                dropouts[name] = FastDropout(layer.p)
                replaced += 1
    return replaced


def right_padded(mask: torch.Tensor) -> bool:
    """True when every row of a (batch, T) attention mask is ones then zeros, starting with a one."""
    if mask.dim() != 2 or mask.shape[1] == 0:
        return False
    ones = mask != 0
    return bool(ones[:, 0].all()) and bool((ones[:, 1:] <= ones[:, :-1]).all())


def same_without_mask(model: Any, inputs: dict[str, Any]) -> tuple[bool, float]:
    """(agrees, relative difference): the last hidden states at unpadded positions, with and without the mask, in
    eval mode (no dropout), without gradients."""
    from training.loss import keep_last_logit

    mask, keep = inputs["attention_mask"], keep_last_logit(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids = inputs["input_ids"]
            states = [model(input_ids=ids, attention_mask=m, output_hidden_states=True, **keep).hidden_states[-1]
                      for m in (mask, None)]  # fmt: skip
    finally:
        model.train(was_training)
        # Casts made under no_grad inside the step's autocast must not be reused by its forward (they carry no
        # gradient: pytorch#112583 in the builds without its fix).
        torch.clear_autocast_cache()
    real = mask.bool()
    ours, theirs = states[1][real].float(), states[0][real].float()
    # Relative to the states' norm, so outlier channels do not widen it: a masked and a causal bf16 kernel
    # accumulate in different orders; a model that looks right differs by the size of the states.
    difference = float((ours - theirs).norm() / theirs.norm().clamp_min(1e-12))
    return difference <= 1e-2, difference


class StepSpeedups:
    """A Trainer mixin: the unneeded padding mask dropped (checked once), and the loss computed under CPU bf16
    autocast with peft's input casting off when `cpu_autocast`. Put it before the Trainer class in the bases."""

    def __init__(self, *args: Any, cpu_autocast: bool = False, drop_padding_mask: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cpu_autocast = cpu_autocast
        self.drop_padding_mask = drop_padding_mask
        self.padding_mask_checked: bool | None = None  # None: not yet seen a padded batch; then whether it agreed

    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        stack: contextlib.ExitStack = super().compute_loss_context_manager()  # type: ignore[misc]
        if self.cpu_autocast:
            from peft.helpers import disable_input_dtype_casting

            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            stack.enter_context(disable_input_dtype_casting(self.model))  # type: ignore[attr-defined]
        return stack

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        mask = inputs.get("attention_mask")
        if self.drop_padding_mask and mask is not None and right_padded(mask):
            if bool(mask.all()) or self._mask_check(model, inputs):
                inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
        return super().compute_loss(model, inputs, *args, **kwargs)  # type: ignore[misc]

    def _mask_check(self, model: Any, inputs: dict[str, Any]) -> bool:
        if self.padding_mask_checked is None:
            agrees, difference = same_without_mask(model, inputs)
            self.padding_mask_checked = agrees
            if not agrees:
                print(  # noqa: T201
                    "note: this model's hidden states change when a right-padded batch runs without its attention "
                    f"mask (relative difference {difference:.3g}); keeping the mask",
                    file=sys.stderr,
                )
        return self.padding_mask_checked


def speedups_card(trainer: StepSpeedups) -> dict[str, Any]:
    """What the card says about these: which were on and what the padding-mask check found (None: no padded
    batch was seen, or the drop was off)."""
    dropouts = [m for m in trainer.model.modules() if isinstance(m, FastDropout)]  # type: ignore[attr-defined]
    return {
        "fast_dropout_layers": len(dropouts),
        "fast_dropout_p": dropouts[0].p if dropouts else None,
        "cpu_autocast": trainer.cpu_autocast,
        "drop_padding_mask": trainer.drop_padding_mask,
        "padding_mask_check": trainer.padding_mask_checked,
    }
