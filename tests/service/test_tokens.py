"""Text limits in tokens: the backend's own tokenizer where there is one, the context window, the estimate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from backends.local.config import VllmServer
from backends.openai_compat import OpenAIBackend
from loadtest.mock_upstream import MockUpstream
from service.config import DEFAULT_CONFIG, BackendConfig, ConfigError, Settings
from service.errors import TextTooLong
from service.prompts import build_messages
from service.state import AppState
from service.tasks import load_tasks
from service.tokens import PER_MESSAGE_TOKENS, Count, Estimate, HfTokenizer, RemoteTokenizer, counter_for
from tests.fakes import FakeBackend

GOOD = '{"company": "ACME", "invoice_date": "2024-03-14", "total_amount": 1.0, "currency": "EUR"}'


def word_tokenizer(folder: Path) -> Path:
    """A real tokenizer.json: one token per whitespace-separated word (unknown words too)."""
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


async def test_tokenizer_counts_with_its_vocabulary_and_estimate_by_characters(tmp_path: Path) -> None:
    counted = await HfTokenizer(word_tokenizer(tmp_path / "tok")).count("hello big world")
    assert (counted.tokens, counted.exact, counted.counted_with) == (3, True, "tokenizer tok")
    estimate = await Estimate().count("x" * 9)
    assert estimate.tokens == 3 and not estimate.exact


def test_which_counter_a_backend_gets(tmp_path: Path) -> None:
    folder = word_tokenizer(tmp_path / "tok")
    vllm = VllmServer(model=str(folder), port=8123)
    managed = BackendConfig(name="local", kind="vllm", base_url="http://127.0.0.1:8123/v1", model="m")
    assert isinstance(counter_for(managed, vllm), HfTokenizer)  # the managed server's model folder
    hosted = BackendConfig(name="openai", kind="openai", model="gpt")
    assert isinstance(counter_for(hosted, vllm), Estimate)
    explicit = BackendConfig(name="openai", kind="openai", model="gpt", tokenizer=str(folder / "tokenizer.json"))
    assert isinstance(counter_for(explicit, vllm), HfTokenizer)
    unprepared = VllmServer(model=str(tmp_path / "not-there"), port=8123)
    assert isinstance(counter_for(managed, unprepared), Estimate)  # not prepared yet: estimate, not a crash
    with pytest.raises(ValueError, match="tokenizer"):
        counter_for(BackendConfig(name="x", model="m", tokenizer=str(tmp_path / "missing")), vllm)


def test_a_configured_tokenizer_that_is_missing_stops_startup(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({"main": {"model": "m", "tokenizer": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match="'main': tokenizer"):
        AppState.build(settings, FakeBackend)


def prompt_tokens(tmp_path: Path, text: str) -> int:
    """What the check counts for task invoice's few-shot prompt around `text`, with the word tokenizer."""
    task = load_tasks(DEFAULT_CONFIG.parent / "tasks")["invoice"]
    messages = build_messages(task, text, "few_shot")
    return sum(len(m["content"].split()) for m in messages) + PER_MESSAGE_TOKENS * len(messages)


def build(make_settings: Callable[..., Settings], tmp_path: Path, **main: object) -> AppState:
    tok = str(word_tokenizer(tmp_path / "tok"))
    settings = make_settings(
        {"main": {"model": "m", "tokenizer": tok, **main}, "big": {"model": "b", "tokenizer": tok}},
        limits={"max_text_tokens": 50},
    )
    return AppState.build(settings, FakeBackend)


async def test_task_limit_is_in_tokens_not_characters(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    state = build(make_settings, tmp_path)
    backend = state.backends["main"]
    assert isinstance(backend, FakeBackend)
    backend.enqueue(GOOD)
    long_words = " ".join(["supercalifragilistic"] * 40)  # 40 tokens, 839 characters: within the limit
    assert (await state.extractor.extract(long_words, task="invoice")).data["company"] == "ACME"
    with pytest.raises(TextTooLong) as caught:
        await state.extractor.extract("a " * 51, task="invoice")  # 51 tokens, 102 characters: over
    assert caught.value.details == {"tokens": 51, "limit_tokens": 50, "counted_with": "tokenizer tok", "exact": True}
    assert len(backend.requests) == 1  # the rejected text never reached the model


async def test_context_window_counts_prompt_text_and_output(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    window = prompt_tokens(tmp_path, "a b c") + 100 + 20  # fits with 20 tokens to spare
    state = build(make_settings, tmp_path, context_window=window, max_output_tokens=100)
    backend = state.backends["main"]
    assert isinstance(backend, FakeBackend)
    backend.enqueue(GOOD)
    await state.extractor.extract("a b c", task="invoice")  # the few-shot prompt fits with 100 to spare
    with pytest.raises(TextTooLong) as caught:
        await state.extractor.extract("w " * 49, task="invoice")  # within the task limit, not the window
    details = caught.value.details
    assert details["context_window"] == window and details["backend"] == "main"
    assert details["prompt_tokens"] == prompt_tokens(tmp_path, "w " * 49) and details["tokens"] == 49
    assert len(backend.requests) == 1


async def test_too_long_for_one_window_falls_back_to_a_bigger_one(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    window = prompt_tokens(tmp_path, "a b c") + 100 + 20
    state = build(make_settings, tmp_path, context_window=window, max_output_tokens=100, fallback=["big"])
    big = state.backends["big"]
    assert isinstance(big, FakeBackend)
    big.enqueue(GOOD)
    result = await state.extractor.extract("w " * 49, task="invoice")
    assert result.backend == "big" and result.data["company"] == "ACME"
    main = state.backends["main"]
    assert isinstance(main, FakeBackend) and main.requests == []


async def test_a_vllm_backend_elsewhere_counts_with_the_servers_tokenize(upstream: MockUpstream) -> None:
    url = f"{upstream.url}/v1"  # type: ignore[attr-defined]
    cfg = BackendConfig(name="remote", kind="vllm", base_url=url, model="m")
    backend = OpenAIBackend(cfg)
    counter = counter_for(cfg, VllmServer(port=8123), backend)  # not the managed server: ask it
    assert isinstance(counter, RemoteTokenizer)
    counted = await counter.count("one two three four")
    assert (counted.tokens, counted.exact) == (4, True) and "/tokenize" in counted.counted_with
    messages = [{"role": "system", "content": "a b"}, {"role": "user", "content": "c d e"}]
    assert (await counter.count_messages(messages)).tokens == 5  # the server's count, template included
    upstream.tokenize_status = 404  # an OpenAI-compatible server without /tokenize: the estimate, said so
    fallback = await counter.count("x" * 40)
    assert (fallback.tokens, fallback.exact) == (10, False)
    await backend.aclose()
    with pytest.raises(ValueError, match="'remote' needs"):
        counter_for(BackendConfig(name="x", model="m", tokenizer="remote"), VllmServer(), None)
    hosted = BackendConfig(name="openai", kind="openai", model="gpt")
    assert isinstance(counter_for(hosted, VllmServer(), OpenAIBackend(hosted)), Estimate)


async def test_short_texts_near_the_window_count_the_prompt_around_them_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The few-shot prompt's bytes alone overflow this window, so a byte bound would count every request;
    the prompt around the text is counted once per task and backend, and short texts then cost nothing."""
    window = prompt_tokens(tmp_path, "a b c") + 100 + 20
    state = build(make_settings, tmp_path, context_window=window, max_output_tokens=100)
    calls: list[int] = []
    counter = state.extractor.limits.counter("main")
    original = counter.count_messages

    async def spy(messages: list[dict[str, str]]) -> Count:
        calls.append(len(messages))
        return await original(messages)

    counter.count_messages = spy  # type: ignore[method-assign]
    backend = state.backends["main"]
    assert isinstance(backend, FakeBackend)
    backend.enqueue(GOOD, GOOD)
    for text in ("a b c", "d e"):
        assert (await state.extractor.extract(text, task="invoice")).data["company"] == "ACME"
    assert len(calls) == 1  # the empty-text prompt, once
    with pytest.raises(TextTooLong):
        await state.extractor.extract("w " * 49, task="invoice")  # near the window: counted for real
    assert len(calls) == 2
