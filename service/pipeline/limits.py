"""Text limits, checked before any model call: characters, tokens (the backend's own tokenizer), context window.

Nothing is tokenized while a cheap upper bound fits: a byte-level tokenizer never makes more tokens than bytes,
and the prompt around the text is counted once per task and backend, so only texts near a limit cost a count
(or, with a remote tokenizer, a round trip).
"""

from __future__ import annotations

from collections.abc import Mapping

from backends.base import Backend
from service.config import BackendConfig, Settings
from service.errors import TextTooLong
from service.prompts import build_messages
from service.tasks import Task
from service.tokens import PER_MESSAGE_TOKENS, TokenCounter, counter_for


class TextLimits:
    """One per extractor: a token counter per backend and the counted prompt overheads."""

    def __init__(self, settings: Settings, backends: Mapping[str, Backend], tasks: Mapping[str, Task]) -> None:
        self.settings = settings
        self.tasks = tasks
        self._counters = {
            name: counter_for(cfg, settings.vllm, backends.get(name)) for name, cfg in settings.backends.items()
        }
        self._overheads: dict[tuple[str, str], tuple[int, int]] = {}

    def counter(self, backend: str) -> TokenCounter:
        """The token counter that backend's limits are checked with."""
        return self._counters[backend]

    def check_chars(self, task: Task, text: str) -> None:
        max_chars = task.max_text_chars or self.settings.limits.max_text_chars
        if len(text) > max_chars:
            raise TextTooLong(
                f"text is {len(text)} characters; the limit for task {task.name!r} is {max_chars}",
                details={"length": len(text), "limit": max_chars},
            )

    async def check_tokens(
        self, task: Task, text: str, cfg: BackendConfig, messages: list[dict[str, str]], max_output: int
    ) -> None:
        """400 text_too_long when the text passes the task's token limit, or the prompt + text + max output
        passes the backend's context window."""
        counter = self._counters[cfg.name]
        limit = task.max_text_tokens or self.settings.limits.max_text_tokens
        if len(text.encode()) > limit:
            counted = await counter.count(text)
            if counted.tokens > limit:
                raise TextTooLong(
                    f"text is {counted.tokens} tokens ({counted.counted_with}); the limit for task {task.name!r} "
                    f"is {limit}",
                    details={"tokens": counted.tokens, "limit_tokens": limit, "counted_with": counted.counted_with,
                             "exact": counted.exact},
                )  # fmt: skip
        window = cfg.context_window
        if window is None:
            return
        content = _content_bytes(messages)
        overhead = await self._prompt_overhead(task, cfg)
        if overhead is None:  # an ad-hoc task: bytes all the way
            bound = content + PER_MESSAGE_TOKENS * len(messages)
        else:  # the counted prompt around an empty text, plus the text's bytes, plus slack for the seams
            bound = overhead[0] + (content - overhead[1]) + PER_MESSAGE_TOKENS
        if bound + max_output <= window:
            return
        prompt = await counter.count_messages(messages)
        if prompt.tokens + max_output > window:
            tokens = (await counter.count(text)).tokens
            raise TextTooLong(
                f"the prompt is {prompt.tokens} tokens with this text ({tokens}); with up to {max_output} "
                f"output tokens it does not fit backend {cfg.name!r}'s context window of {window} tokens",
                details={"tokens": tokens, "prompt_tokens": prompt.tokens, "max_output_tokens": max_output,
                         "context_window": window, "backend": cfg.name, "counted_with": prompt.counted_with,
                         "exact": prompt.exact},
            )  # fmt: skip

    async def _prompt_overhead(self, task: Task, cfg: BackendConfig) -> tuple[int, int] | None:
        """(tokens, content bytes) of a configured task's prompt with an empty text, counted once per backend;
        None for ad-hoc tasks, and while a remote tokenizer is failing (its estimate is not remembered)."""
        if self.tasks.get(task.name) is not task:
            return None
        key = (cfg.name, task.name)
        if key not in self._overheads:
            counter = self._counters[cfg.name]
            empty = build_messages(task, "", cfg.prompt_style)
            counted = await counter.count_messages(empty)
            if counted.counted_with != counter.name:
                return None
            self._overheads[key] = (counted.tokens, _content_bytes(empty))
        return self._overheads[key]


def _content_bytes(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].encode()) for m in messages)
