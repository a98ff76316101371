"""The loss on answer tokens with the output layer computed at the answer positions only.

A receipt is ~700 positions of prompt and ~40 of answer. The standard loss projects every position onto the
vocabulary (49,152 x 576 for SmolLM2, tied to the embeddings): ~1/5 of the forward compute, and logits plus their
gradient of T x 49,152 floats per sequence dominate peak memory; then all but the answer's are ignored. Here the
model runs with `logits_to_keep=1` and returns its hidden states; the output layer is applied to the rows whose next
token is learned and the cross entropy reduced exactly as transformers' `ForCausalLMLoss` does, so the loss and the
gradients are the same (tests/training/test_loss.py) for less work.

Importing this module imports transformers; train.py imports it lazily.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.nn import functional as F
from transformers import Trainer
from transformers.modeling_outputs import CausalLMOutputWithPast

IGNORE_INDEX = -100


def keep_last_logit(model: Any) -> dict[str, int]:
    """The forward keyword that computes only the last position's logits: `logits_to_keep` (transformers >= 4.50),
    `num_logits_to_keep` (4.45-4.49), or nothing for a model without one (all logits computed, and ignored)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the forward in **kwargs
    parameters = inspect.signature(base.forward).parameters
    return next(({name: 1} for name in ("logits_to_keep", "num_logits_to_keep") if name in parameters), {})


def answer_loss(
    head: Any, hidden: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits of the answer rows): next-token cross entropy where the shifted label is learned.

    `hidden` (batch, T, H) is after the final norm; `labels` (batch, T) hold -100 where nothing is learned. Summed
    and divided by `num_items_in_batch` (the Trainer's count over all accumulated batches) when given, else the mean
    over answer tokens: `ForCausalLMLoss`'s reductions, with its upcast of the logits to fp32.
    """
    targets = labels[:, 1:].to(hidden.device)
    learned = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][learned]).float()  # (answer tokens in the batch, vocab)
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets[learned]), logits
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(logits.device)
    return F.cross_entropy(logits, targets[learned], reduction="sum") / num_items_in_batch, logits


def check_head(head: Any, hidden: torch.Tensor, logits: torch.Tensor) -> bool:
    """Raise unless the head applied to the last hidden state gives the model's own last-position logits; False
    (not checked) while those are not finite: a diverged step is NonFiniteGuard's to report.

    That holds when `hidden_states[-1]` is after the final norm (Llama: `capture_outputs` puts `last_hidden_state`
    there) and the model adds nothing after its output layer (the soft-capping or logit scaling of some
    architectures), i.e. exactly when `answer_loss` computes the model's loss. Loose tolerance: bf16 kernels.
    """
    with torch.no_grad():
        ours, theirs = head(hidden[:, -1]).float(), logits[:, -1].float()
        if not bool(torch.isfinite(theirs).all()):
            return False
        scale = max(1.0, float(theirs.abs().max()))
        if not torch.allclose(ours, theirs, rtol=1e-2, atol=1e-2 * scale):
            raise RuntimeError(
                "answer_only_logits: this model's logits are not its output layer applied to its last hidden state "
                f"(max difference {float((ours - theirs).abs().max()):.3g}); train with --answer_only_logits false"
            )
    return True


class AnswerOnlyTrainer(Trainer):
    """A Trainer whose loss (training and eval_loss) projects only the answer positions onto the vocabulary.

    The value is the standard loss's: the mean over answer tokens, or the sum over the number of answer tokens in
    the accumulated batch when the Trainer counts them, which is when the model's own loss would use that count, so
    the Trainer's gradient-accumulation scaling stays right. With `return_outputs` the logits are those of the
    answer rows, flattened over the batch (N, vocab): nothing here computes metrics from them
    (`prediction_loss_only`).
    """

    _keep: dict[str, int] | None = None
    _head_checked = False

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        # DataParallel splits the batch and rescales the count its own way; this project trains on one device.
        if self.args.n_gpu > 1 or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        unwrapped = self.accelerator.unwrap_model(model)
        if self._keep is None:
            self._keep = keep_last_logit(unwrapped)
        features = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**features, **self._keep, output_hidden_states=True)
        hidden, head = outputs.hidden_states[-1], unwrapped.get_output_embeddings()
        # The model's forward runs under accelerate's autocast (bf16 on a GPU); so does its output layer, here too.
        with self.accelerator.autocast():
            if not self._head_checked:
                self._head_checked = check_head(head, hidden, outputs.logits)
            # The model normalises by the count only when the Trainer passes it to the model; the Trainer then
            # treats the loss as already scaled for gradient accumulation. Mirror that.
            count = num_items_in_batch if getattr(self, "model_accepts_loss_kwargs", False) else None
            loss, logits = answer_loss(head, hidden, inputs["labels"], count)
        if count is not None and getattr(self.args, "average_tokens_across_devices", False):
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: the count spans all processes
        return (loss, CausalLMOutputWithPast(loss=loss, logits=logits)) if return_outputs else loss
