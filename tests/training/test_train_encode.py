"""Chat-template formatting with loss on the answer tokens only."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the [train] extra")

from service.config import DEFAULT_CONFIG  # noqa: E402
from service.tasks import load_tasks  # noqa: E402
from training.datasets import Record  # noqa: E402
from training.train import encode  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from training.base_model import prepare

    return AutoTokenizer.from_pretrained(prepare())


def test_only_the_answer_is_learned(tokenizer) -> None:  # type: ignore[no-untyped-def]
    task = load_tasks(DEFAULT_CONFIG.parent / "tasks")["support_intent"]
    record = Record("1", "Where is my new card?", {"intent": "card_arrival"})
    encoded = encode(tokenizer, task, record, max_length=512)
    assert encoded is not None
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert len(ids) == len(labels) == len(encoded["attention_mask"])
    learned = [t for t in labels if t != -100]
    assert tokenizer.decode(learned) == '{"intent":"card_arrival"}' + tokenizer.eos_token
    prompt = tokenizer.decode(ids[: len(ids) - len(learned)])
    assert prompt.startswith("<|im_start|>system\nExtract support_intent as JSON.")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<document>\nWhere is my new card?\n</document>" in prompt
    assert encode(tokenizer, task, record, max_length=10) is None
