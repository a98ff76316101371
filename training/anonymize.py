"""PII anonymisation with consistent fake replacements (the same original always maps to the same fake).

Detects e-mail addresses, phone numbers, IBANs (mod-97 checked), card numbers (Luhn checked) and person
names where detectable: names the extraction itself found (fields like `persons`/`name`), names after an
honorific (Mr, Ms, Dr, Herr, Frau, Sr., Sra.) and known first names followed by a capitalised surname.
Replacements are applied to the text and to the output alike, so a dataset stays self-consistent.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from faker import Faker

from service.pii import CARD, EMAIL, IBAN, iban_ok, luhn_ok

PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){2,4}(?![\w.])")
HONORIFIC = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|Herr|Frau|Sr|Sra)\.?\s+((?:[A-Z][a-zà-ÿ'-]+\s?){1,3})")
NAME_FIELDS = ("persons", "person", "name", "names", "customer_name", "contact", "parties_people")


@cache
def _first_names() -> frozenset[str]:
    names: set[str] = set()
    for locale in ("en_US", "en_GB", "de_DE", "es_ES", "fr_FR"):
        provider = Faker(locale).provider("faker.providers.person")
        for attr in ("first_names", "first_names_male", "first_names_female"):
            value = getattr(provider, attr, None) or {}
            names.update(value if isinstance(value, Iterable) else [])
    return frozenset(n for n in names if isinstance(n, str) and len(n) > 2)


class Anonymizer:
    """Replaces PII consistently within one run; `counts` says what was replaced."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.mapping: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self._fake = Faker("en_US")

    def _replacement(self, kind: str, original: str, make: Callable[[Faker], str]) -> str:
        if original not in self.mapping:
            digest = hashlib.sha256(f"{self.seed}:{kind}:{original}".encode()).digest()
            self._fake.seed_instance(int.from_bytes(digest[:8], "big"))
            self.mapping[original] = make(self._fake)
        self.counts[kind] += 1
        return self.mapping[original]

    def names_in(self, output: Any) -> list[str]:
        found: list[str] = []
        if isinstance(output, dict):
            for key, value in output.items():
                if key in NAME_FIELDS:
                    found += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v]
                else:
                    found += self.names_in(value)
        elif isinstance(output, list):
            for value in output:
                found += self.names_in(value)
        return found

    def detect_names(self, text: str, output: Any) -> list[str]:
        names = set(self.names_in(output))
        names.update(m.group(1).strip() for m in HONORIFIC.finditer(text))
        first = _first_names()
        for match in re.finditer(r"\b([A-Z][a-zà-ÿ]+)\s+([A-Z][a-zà-ÿ'-]+)\b", text):
            if match.group(1) in first:
                names.add(match.group(0))
        return sorted((n for n in names if len(n) > 2), key=len, reverse=True)

    def text(self, text: str, names: list[str]) -> str:
        text = EMAIL.sub(lambda m: self._replacement("email", m.group(0), lambda f: f.email()), text)
        text = IBAN.sub(
            lambda m: self._replacement("iban", m.group(0), lambda f: f.iban()) if iban_ok(m.group(0)) else m.group(0),
            text,
        )
        text = CARD.sub(
            lambda m: self._replacement("card_number", m.group(0), lambda f: f.credit_card_number())
            if luhn_ok(m.group(0)) else m.group(0),
            text,
        )  # fmt: skip
        text = PHONE.sub(
            lambda m: self._replacement("phone", m.group(0), lambda f: f.phone_number())
            if sum(c.isdigit() for c in m.group(0)) >= 9 else m.group(0),
            text,
        )  # fmt: skip
        for name in names:
            if name in text:
                fake = self._replacement("person_name", name, lambda f: f.name())
                text = text.replace(name, fake)
        return text

    def value(self, value: Any) -> Any:
        """Apply the replacements already made to an output value (recursively)."""
        if isinstance(value, str):
            for original in sorted(self.mapping, key=len, reverse=True):
                if original in value:
                    value = value.replace(original, self.mapping[original])
            return value
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def record(self, text: str, output: Any) -> tuple[str, Any]:
        names = self.detect_names(text, output)
        new_text = self.text(text, names)
        for name in names:  # names only in the output (not in the text) are replaced too
            if name not in self.mapping:
                self._replacement("person_name", name, lambda f: f.name())
        return new_text, self.value(output)
