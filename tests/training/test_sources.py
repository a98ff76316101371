"""Synthetic generators, the BANKING77 / WNUT-17 importers, PII anonymisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import DEFAULT_CONFIG
from service.tasks import load_tasks
from training.anonymize import Anonymizer, iban_ok, luhn_ok
from training.datasets import Record, validator_for
from training.importers import banking77, cap_empty, read_conll, spans, wnut17, wnut_output
from training.synthetic import GENERATORS, generate

TASKS = load_tasks(DEFAULT_CONFIG.parent / "tasks")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_synthetic_records_are_valid_reproducible_and_mixed(task: str) -> None:
    records = generate(task, 120, seed=7)
    validator = validator_for(TASKS[task])
    assert all(not list(validator.iter_errors(r.output)) for r in records)
    assert generate(task, 120, seed=7) == records
    assert generate(task, 120, seed=8) != records
    kinds = {r.id.split("-")[1] for r in records}
    assert kinds == {"easy", "medium", "hard", "adversarial", "ood"}
    assert len({r.id for r in records}) == 120


def test_synthetic_gold_values_appear_in_the_text() -> None:
    for record in generate("receipt", 60, seed=1, mix={"easy": 1}):
        assert record.output["company"] in record.text
    for record in generate("entities", 60, seed=1, mix={"easy": 1, "medium": 1}):
        for values in record.output.values():
            assert all(v in record.text for v in values)
    for record in generate("contract_clause", 60, seed=1):
        assert all(p in record.text for p in record.output["parties"])


def test_bad_mix_is_rejected() -> None:
    with pytest.raises(ValueError, match="mix"):
        generate("invoice", 3, mix={"bogus": 1})
    with pytest.raises(ValueError, match="no synthetic generator"):
        generate("support_intent", 3)


def test_bio_spans_and_wnut_mapping() -> None:
    sentence = [("Empire", "B-location"), ("State", "I-location"), ("=", "O"), ("ESB", "B-location"),
                ("by", "O"), ("Ray", "B-person"), ("Rice", "I-person"), ("at", "O"), ("Google", "B-corporation"),
                ("fans", "B-group"), ("Avatar", "B-creative-work")]  # fmt: skip
    assert spans(sentence) == [("location", "Empire State"), ("location", "ESB"), ("person", "Ray Rice"),
                               ("corporation", "Google"), ("group", "fans"), ("creative-work", "Avatar")]  # fmt: skip
    assert wnut_output(sentence) == {"persons": ["Ray Rice"], "organizations": ["Google", "fans"],
                                     "locations": ["Empire State", "ESB"], "dates": []}  # fmt: skip


def test_read_conll_handles_tab_only_separator_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.conll"
    path.write_text("a\tO\nb\tB-person\n\t\nc\tO\n\n")
    assert read_conll(path) == [[("a", "O"), ("b", "B-person")], [("c", "O")]]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data not beside the checkout")
def test_public_sets_import_into_valid_records() -> None:
    b77 = banking77(SHARED / "banking77", test_limit=200, seed=0)
    assert len(b77["test"]) == 200 and len(b77["train"]) + len(b77["val"]) == 10_003
    validator = validator_for(TASKS["support_intent"])
    assert all(not list(validator.iter_errors(r.output)) for part in b77.values() for r in part)
    assert banking77(SHARED / "banking77", test_limit=200, seed=0)["test"] == b77["test"]
    w = wnut17(SHARED / "wnut17")
    assert [len(w[p]) for p in ("train", "val", "test")] == [3394, 1009, 1287]
    validator = validator_for(TASKS["entities"])
    assert all(not list(validator.iter_errors(r.output)) for r in w["test"])
    assert sum(len(r.output["persons"]) for r in w["test"]) > 300


def test_checksums() -> None:
    assert luhn_ok("4111 1111 1111 1111") and not luhn_ok("4111 1111 1111 1112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")


def test_anonymizer_replaces_pii_consistently_in_text_and_output() -> None:
    anon = Anonymizer(seed=1)
    text = (
        "Hi, this is Dr. Jane Miller (jane.miller@example.com, +49 30 1234 5678). "
        "Refund to DE89 3704 0044 0532 0130 00, card 4111 1111 1111 1111. Invoice total 1,190.00 on 2024-03-14."
    )
    new_text, output = anon.record(text, {"persons": ["Jane Miller"], "email": "jane.miller@example.com"})
    for secret in ("Jane Miller", "jane.miller@example.com", "1234 5678", "DE89 3704", "4111 1111"):
        assert secret not in new_text
    assert "1,190.00" in new_text and "2024-03-14" in new_text  # amounts and dates are not PII
    assert output["persons"][0] in new_text and output["email"] in new_text  # stays self-consistent
    assert anon.counts == {"email": 1, "iban": 1, "card_number": 1, "phone": 1, "person_name": 1}
    again_text, _ = Anonymizer(seed=1).record(text, {"persons": ["Jane Miller"]})
    assert again_text == new_text  # the same seed gives the same fakes


def test_anonymizer_finds_known_first_names_without_output_hints() -> None:
    text, _ = Anonymizer().record("Please call Michael Johnson about the order.", {})
    assert "Michael Johnson" not in text


def test_cap_empty_keeps_every_entity_and_a_seeded_share_of_empties() -> None:
    records = [Record(f"r{i}", "t", {"persons": ["x"] if i % 4 == 0 else []}) for i in range(40)]  # 10 with
    capped = cap_empty(records, 1 / 3, seed=1)
    assert [r.id for r in capped if r.output["persons"]] == [f"r{i}" for i in range(0, 40, 4)]
    assert sum(1 for r in capped if not r.output["persons"]) == 5  # 10 * (1/3) / (2/3)
    assert [r.id for r in capped] == sorted((r.id for r in capped), key=lambda i: int(i[1:]))  # order kept
    assert cap_empty(records, 1 / 3, seed=1) == capped and len(cap_empty(records, 0.0)) == 10
    with pytest.raises(ValueError, match="max_share"):
        cap_empty(records, 1.0)
