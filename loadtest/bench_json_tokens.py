"""Output tokens of compact vs pretty-printed JSON for the same answers (SmolLM2 tokenizer).

    python -m loadtest.bench_json_tokens

Grammar-compact output (`vllm.compact_json`) and compact few-shot answers keep a model from spending tokens on
indentation; this measures what that is worth on each shipped task's synthetic answers.
"""

from __future__ import annotations

import json

from backends.local.base_model import prepare
from training.synthetic import GENERATORS, generate


def main() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepare())
    rows = []
    for task in sorted(GENERATORS):
        outputs = [r.output for r in generate(task, 200, seed=0)]
        compact = sum(
            len(tokenizer(json.dumps(o, ensure_ascii=False, separators=(",", ":")))["input_ids"]) for o in outputs
        )
        spaced = sum(len(tokenizer(json.dumps(o, ensure_ascii=False))["input_ids"]) for o in outputs)
        pretty = sum(len(tokenizer(json.dumps(o, ensure_ascii=False, indent=2))["input_ids"]) for o in outputs)
        rows.append((task, compact / len(outputs), spaced / len(outputs), pretty / len(outputs)))
    print(f"{'task':<16} {'compact':>8} {'spaced':>8} {'indent=2':>9} {'saving vs indent':>17}")  # noqa: T201
    for task, c, s, p in rows:
        print(f"{task:<16} {c:8.1f} {s:8.1f} {p:9.1f} {1 - c / p:16.0%}")  # noqa: T201


if __name__ == "__main__":
    main()
