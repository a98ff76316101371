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

    from backends.local.base_model import prepare

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


def test_examples_that_would_teach_nothing_whole_are_skipped_and_counted(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from training.train import encode_all, encode_or_skip

    task = load_tasks(DEFAULT_CONFIG.parent / "tasks")["support_intent"]
    record = Record("1", "Where is my new card?", {"intent": "card_arrival"})
    full = encode(tokenizer, task, record, max_length=512)
    assert full is not None
    prompt_len = full["labels"].count(-100)
    # Room for the prompt and part of the answer: skipped whole, never truncated to a partly or fully masked row.
    for max_length in (prompt_len, prompt_len + 1, len(full["input_ids"]) - 1):
        assert encode_or_skip(tokenizer, task, record, max_length) == (None, "too_long")
    assert encode(tokenizer, task, record, max_length=len(full["input_ids"])) == full
    long = Record("2", "help " * 2000, {"intent": "card_arrival"})
    encoded = encode_all(tokenizer, task, [record, long, record], max_length=512)
    assert len(encoded.examples) == 2 and encoded.skipped == {"too_long": 1}
    assert all(any(label != -100 for label in e["labels"]) for e in encoded.examples)


def test_an_answer_without_tokens_is_skipped() -> None:
    from training.train import encode_or_skip

    class NoAnswerTokenizer:
        eos_token = ""

        def apply_chat_template(self, messages: object, **kwargs: object) -> str:
            return "prompt"

        def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]:
            return {"input_ids": [1, 2] if text == "prompt" else []}

    task = load_tasks(DEFAULT_CONFIG.parent / "tasks")["support_intent"]
    record = Record("1", "hello", {"intent": "card_arrival"})
    assert encode_or_skip(NoAnswerTokenizer(), task, record, max_length=512) == (None, "no_answer")
