import pytest

from service.parsing import OutputNotJSON, dumps_compact, parse_output


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        '  {"a":1}\n',
        '```json\n{"a": 1}\n```',
        '```\n{"a": 1}\n```',
        'Sure! Here is the JSON: {"a": 1} Hope that helps.',
        'Result:\n```json\n{"a": 1}\n```\nDone.',
    ],
)
def test_parses_clean_fenced_and_prose_wrapped_json(text: str) -> None:
    parsed = parse_output(text)
    assert parsed.value == {"a": 1}
    assert parsed.repaired is False


def test_repairs_near_miss_json_and_says_so() -> None:
    parsed = parse_output("{'a': 1, 'b': 'x',}")
    assert parsed.value == {"a": 1, "b": "x"}
    assert parsed.repaired is True


def test_repairs_truncated_object() -> None:
    parsed = parse_output('{"company": "ACME", "total": 12.5')
    assert parsed.value == {"company": "ACME", "total": 12.5}
    assert parsed.repaired


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "{", "Answer: [", "{{{{"])
def test_text_without_usable_json_raises(text: str) -> None:
    with pytest.raises(OutputNotJSON):
        parse_output(text)


def test_json_scalars_parse_and_are_left_to_the_validator() -> None:
    assert parse_output("null").value is None
    assert parse_output("[]").value == []


def test_dumps_compact_has_no_whitespace_and_keeps_unicode() -> None:
    assert dumps_compact({"a": [1, 2], "b": "München"}) == '{"a":[1,2],"b":"München"}'


@pytest.mark.parametrize(
    "text",
    [
        '{"total": NaN}',
        '{"total": Infinity}',
        '{"total": -Infinity}',
        '{"name": "\\ud800"}',
        '{"items": [{"deep": [NaN]}]}',
    ],  # fmt: skip
)
def test_values_json_cannot_carry_are_no_answer(text: str) -> None:
    with pytest.raises(OutputNotJSON, match="JSON cannot carry|is not JSON|could not be repaired"):
        parse_output(text)


@pytest.mark.parametrize(
    "text",
    ["[" * 260 + "]" * 260, '{"a":' * 260 + "1" + "}" * 260],
)
def test_an_answer_nested_deeper_than_a_response_can_carry_is_no_answer(text: str) -> None:
    with pytest.raises(OutputNotJSON, match="deeper than 250 levels"):
        parse_output(text)
    assert parse_output("[" * 250 + "]" * 250).value  # 250 levels: as deep as an answer may be
    assert parse_output("[" * 249 + "1" + "]" * 249).value
    with pytest.raises(OutputNotJSON, match="deeper than 250 levels"):
        parse_output("[" * 251 + "]" * 251)


def test_broken_json_too_deep_for_the_repairer_is_no_answer() -> None:
    with pytest.raises(OutputNotJSON, match="could not be repaired"):
        parse_output('{"a": [' + '{"b": [1, 2, {"c": "d' * 1000)
