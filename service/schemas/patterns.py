r"""Regular expressions from schemas (`pattern`, `patternProperties`) matched with a timeout.

The engine is the `regex` module with `timeout=`, not RE2 and not a bounded pre-check:
- RE2 is linear-time but rejects lookaround and backreferences, which real schemas use (password rules,
  "does not end with ..."), so such schemas would be refused; `regex` accepts what `re` accepts (its default
  V0 mode is `re`-compatible), so a pattern means what it meant before.
- `regex` stops a match when the timeout passes, and with `concurrent=True` releases the GIL while it runs.
  A pattern that backtracks exponentially (`^(a|a)*$` against 40 `a`s and a `!`) ends in `TooSlow` after the
  time left of the thread's budget, instead of running for days in a thread that cannot be killed.

Why the `re` module jsonschema sees is replaced rather than keywords overridden through `validators.extend`:
jsonschema calls `re.search` in five places in three modules — `pattern`, `patternProperties`,
`additionalProperties` (`_utils.find_additional_properties`) and `unevaluatedProperties` (its 2019-09 and
2020-12 walkers of evaluated properties) — and overriding keywords would mean copying those walkers. The
stand-in delegates everything to `re` except `search`; outside a time budget (other users of jsonschema in the
process) `search` has no timeout, exactly as before. `tests/service/schemas/test_patterns.py` fails if a
jsonschema release moves a call site out of reach.

JSON Schema patterns are ECMA-262 regular expressions, and validators in other languages (ajv, the engines'
grammars) read them so; `ecma` rewrites the three places where Python reads the same text differently:
`$` (Python also matches before a final newline: `^[A-Z]{3}$` would pass `"EUR\n"`), `\d` and `\w` (Python's
take in every script's digits and letters, ECMA's are ASCII). `\p{L}` and the like mean what ECMA says.
"""

from __future__ import annotations

import functools
import importlib
import re
from types import ModuleType
from typing import Any

import regex

from service.schemas import budget
from service.schemas.problems import clip

# jsonschema's modules whose `re.search` runs schema patterns against instance data.
PATCHED_MODULES = ("jsonschema._keywords", "jsonschema._utils", "jsonschema._legacy_keywords")


_OUTSIDE_CLASS = {"d": "[0-9]", "D": "[^0-9]", "w": "[A-Za-z0-9_]", "W": "[^A-Za-z0-9_]"}
# Inside a class each expansion ends in a whole range or a lone character, so a `-` after it stays a literal
# (`[\w-.]`); \D and \W inside a class keep Python's (wider) meaning.
_INSIDE_CLASS = {"d": "0-9", "w": "_A-Za-z0-9"}


def ecma(pattern: str) -> str:
    r"""`pattern` (ECMA-262) written so Python's `regex` matches what ECMA matches: `$` as the end of the
    string only, `\d` and `\w` as ASCII (outside and inside character classes), `[]` as the empty class and
    `[^]` as any character. Inside a class the first `]` ends it and `[` is a literal, as in ECMA."""
    out: list[str] = []
    in_class = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            table = _INSIDE_CLASS if in_class else _OUTSIDE_CLASS
            out.append(table.get(nxt, c + nxt))
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append("\\[" if c == "[" else c)
        elif c == "[":
            if pattern.startswith("[^]", i):
                out.append("[\\s\\S]")  # ECMA: any character, line breaks included
                i += 3
                continue
            if pattern.startswith("[]", i):
                out.append("(?!)")  # ECMA: the empty class, which matches nothing
                i += 2
                continue
            in_class = True
            opener = "[^" if pattern.startswith("[^", i) else "["
            out.append(opener)
            i += len(opener)
            continue
        elif c == "$":
            out.append("\\Z")
        else:
            out.append(c)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str, flags: int) -> Any:
    return regex.compile(ecma(pattern), flags)  # the module's own cache costs ~4 us a lookup, this one ~0.1


def search(pattern: str, string: str, flags: int = 0) -> Any:
    """`re.search` with the thread's remaining budget as timeout (`TooSlow` when it runs out)."""
    # Long patterns are compiled each time rather than kept: the cache must not hold megabytes of them.
    compiled = _compiled(pattern, flags) if len(pattern) <= 1000 else regex.compile(ecma(pattern), flags)
    left = budget.remaining()
    if left is None:
        return compiled.search(string, concurrent=True)
    try:
        return compiled.search(string, timeout=max(left, 0.001), concurrent=True)
    except TimeoutError:
        raise budget.TooSlow(f"pattern {clip(pattern, 80)!r} ran out of time on a value") from None


class _TimedRe(ModuleType):
    """What `re` is inside jsonschema's keyword modules: `re`, with `search` from above."""

    def __init__(self) -> None:
        super().__init__("re")
        self.search = search

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)


TIMED_RE = _TimedRe()


def install() -> None:
    """Point jsonschema's keyword modules at `TIMED_RE` (idempotent)."""
    for name in PATCHED_MODULES:
        module = importlib.import_module(name)
        current = getattr(module, "re", None)
        if current is not re and current is not TIMED_RE:
            raise RuntimeError(f"{name} no longer uses the `re` module: update service/schemas/patterns.py")
        module.re = TIMED_RE  # type: ignore[attr-defined]


def pattern_error(pattern: str) -> str | None:
    """Why `regex` cannot compile `pattern` (None: it can)."""
    try:
        regex.compile(ecma(pattern))
    except regex.error as e:
        return str(e)
    except (ValueError, TypeError, OverflowError) as e:
        return str(e)
    return None


install()
