"""Schema work off the event loop, each job under a time budget: admitting an ad-hoc schema, and parsing and
validating an answer.

Checking a meta-schema, json-repair and validation are pure Python whose cost the request controls (a big
schema, a broken answer, a pattern that backtracks): run on the event loop they stall every other request
of the worker. Here they run in a few worker threads, and each job stops itself at its budget
(`service.schemas.budget`): a schema that takes too long to check is 400 invalid_schema, an answer that takes
too long to validate is 422 validation_timeout (the pipeline makes no further attempt on such a schema).
Validation that is provably cheap (a small answer that parses as is, a schema with no branches, references
or patterns that could backtrack: `CompiledSchema.cheap`) stays on the loop: a thread hop costs ~0.1 ms, more
than that validation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from service.config import Limits
from service.errors import InvalidSchema
from service.grounding import Grounded, ground
from service.parsing import OutputNotJSON, parse_output
from service.schemas.budget import TooSlow, time_budget
from service.schemas.compiled import (
    CompiledSchema,
    Issue,
    SchemaCache,
    canonical,
    compile_schema,
    schema_key,
    validate,
)
from service.schemas.problems import SchemaProblem
from service.schemas.shape import SchemaLimits

T = TypeVar("T")
INLINE_CHARS = 4096  # answers up to this long, parsed without repair, are validated on the loop when cheap
# ...and within this long: a "cheap" schema that is not (a pattern the classifier let through) moves to a worker
INLINE_BUDGET_S = 0.05


@dataclass(frozen=True, slots=True)
class Checked:
    """An answer parsed and validated: `data` (None if it did not parse), its issues, whether it was repaired."""

    data: Any
    issues: list[Issue]
    repaired: bool = False


class Checks:
    """The worker threads and the cache of compiled ad-hoc schemas; one per extractor."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.schema_limits = SchemaLimits(
            limits.max_schema_bytes, limits.max_schema_depth, limits.max_schema_properties
        )
        self.cache = SchemaCache(limits.schema_cache_bytes)
        self._pool = ThreadPoolExecutor(limits.validation_threads, thread_name_prefix="schema-checks")

    def close(self) -> None:
        """Stop the worker threads (work already taken finishes within its budget)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, budget_s: float, job: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            with time_budget(budget_s):  # from when a thread takes it: time queued is not the job's
                return job(*args)

        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    async def admit(self, schema: dict[str, Any], prepare: Callable[[CompiledSchema], None]) -> CompiledSchema:
        """An ad-hoc schema checked and compiled (or the same one from the cache); `prepare` runs on a new one in
        the worker thread. 400 invalid_schema for any problem: nothing has been called or billed yet."""
        budget = self.limits.schema_check_budget_s
        try:
            return await self._off_loop(budget, self._admit, schema, prepare)
        except SchemaProblem as e:
            raise InvalidSchema(f"invalid schema: {e.message}", details=e.details) from None
        except TooSlow:
            raise InvalidSchema(
                f"checking the schema took longer than limits.schema_check_budget_s ({budget:g} s): send a smaller "
                "or simpler schema",
                details={"limit": "schema_check_budget_s", "allowed": budget},
            ) from None

    def _admit(self, schema: dict[str, Any], prepare: Callable[[CompiledSchema], None]) -> CompiledSchema:
        raw = canonical(schema)
        cached = self.cache.get(schema_key(raw))
        if cached is not None:
            return cached
        compiled = compile_schema(schema, self.schema_limits, raw=raw)
        prepare(compiled)
        self.cache.put(compiled)
        return compiled

    async def answer(self, text: str, compiled: CompiledSchema) -> Checked:
        """`text` parsed and validated against `compiled`; TooSlow past limits.validation_budget_s."""
        if compiled.cheap and len(text) <= INLINE_CHARS:
            try:
                parsed = parse_output(text, max_repair_chars=0)
            except OutputNotJSON:
                pass  # needs json-repair, or is not JSON at all: the worker finds out
            else:
                try:
                    with time_budget(INLINE_BUDGET_S):
                        return Checked(parsed.value, validate(parsed.value, compiled))
                except TooSlow:
                    pass  # not as cheap as it looked: again in a worker, under the full budget
        return await self._off_loop(self.limits.validation_budget_s, self._answer, text, compiled)

    def _answer(self, text: str, compiled: CompiledSchema) -> Checked:
        try:
            parsed = parse_output(text, max_repair_chars=self.limits.max_repair_chars)
        except OutputNotJSON as e:
            return Checked(None, [Issue("$", str(e))])
        return Checked(parsed.value, validate(parsed.value, compiled), parsed.repaired)

    async def ground(self, data: Any, rules: Mapping[str, str], text: str) -> Grounded:
        """`data`'s grounded values checked against `text` (service.grounding), in a worker under the validation
        budget: the scan is linear in the text, the edit distances in the candidates it prints."""
        return await self._off_loop(self.limits.validation_budget_s, ground, data, rules, text)

    async def revalidate(self, data: Any, compiled: CompiledSchema) -> list[Issue]:
        """`data` (e.g. after PII redaction) validated again, in a worker under the same budget."""
        return await self._off_loop(self.limits.validation_budget_s, validate, data, compiled)
