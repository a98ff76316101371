"""PII in outputs: detection (e-mails, phone numbers, IBANs, card numbers) and a per-task policy.

Phone numbers come from `phonenumbers` (Google's libphonenumber data: real numbering plans, offline);
IBANs must pass their mod-97 check and card numbers the Luhn check, so order numbers and amounts are not
taken for PII. Policies: `allow` (default; extracting contact data may be the job), `redact` (replace each
finding with `[EMAIL]`, `[PHONE]`, ... and validate again), `reject` (422 `pii_detected`, naming the fields and
kinds, never the values).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field

PiiKind = Literal["email", "phone", "iban", "card_number"]
ALL_KINDS: tuple[PiiKind, ...] = ("email", "phone", "iban", "card_number")

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}(?:\s?[A-Z0-9]{1,3})?\b")
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")


class PiiPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["allow", "redact", "reject"] = "allow"
    kinds: list[PiiKind] = Field(default_factory=lambda: list(ALL_KINDS))
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB", "DE", "ES", "FR"],
        description="Regions whose national phone formats count (numbers with +country always do).",
    )


@dataclass(frozen=True, slots=True)
class Finding:
    kind: PiiKind
    start: int
    end: int


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)]
    total = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    return 13 <= len(digits) <= 19 and total % 10 == 0


def iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def find_pii(text: str, kinds: Iterable[PiiKind] = ALL_KINDS, regions: Iterable[str] = ("US",)) -> list[Finding]:
    """Non-overlapping findings in `text`, in order."""
    wanted = set(kinds)
    found: list[Finding] = []
    if "email" in wanted:
        found += [Finding("email", m.start(), m.end()) for m in EMAIL.finditer(text)]
    if "iban" in wanted:
        found += [Finding("iban", m.start(), m.end()) for m in IBAN.finditer(text) if iban_ok(m.group(0))]
    if "card_number" in wanted:
        found += [Finding("card_number", m.start(), m.end()) for m in CARD.finditer(text) if luhn_ok(m.group(0))]
    if "phone" in wanted and sum(c.isdigit() for c in text) >= 7:
        for region in regions:
            matcher = phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)
            found += [Finding("phone", m.start, m.end) for m in matcher]
    found.sort(key=lambda f: (f.start, -f.end))
    kept: list[Finding] = []
    for f in found:  # the first (longest) finding wins an overlap: a card is not also a phone
        if not kept or f.start >= kept[-1].end:
            kept.append(f)
    return kept


def redact_text(text: str, findings: list[Finding]) -> str:
    for f in reversed(findings):
        text = text[: f.start] + f"[{f.kind.upper()}]" + text[f.end :]
    return text


def scan(value: Any, policy: PiiPolicy, path: str = "$") -> tuple[Any, list[tuple[str, PiiKind]]]:
    """(value with findings redacted, [(json path, kind), ...]) over every string in `value`."""
    if isinstance(value, str):
        findings = find_pii(value, policy.kinds, policy.phone_regions)
        return (redact_text(value, findings) if findings else value), [(path, f.kind) for f in findings]
    if isinstance(value, list):
        out, hits = [], []
        for i, item in enumerate(value):
            new, found = scan(item, policy, f"{path}[{i}]")
            out.append(new)
            hits += found
        return out, hits
    if isinstance(value, dict):
        result, hits = {}, []
        for key, item in value.items():
            new, found = scan(item, policy, f"{path}.{key}")
            result[key] = new
            hits += found
        return result, hits
    return value, []
