"""`make adapters`: each recipe prepares its data, trains and ships, and records what it ran (paths relative)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training import recipes
from training.recipes import RECIPES, Recipe, build, concat, main


def test_every_recipe_trains_a_shipped_task_on_files_its_data_steps_write(tmp_path: Path) -> None:
    from service.config import DEFAULT_CONFIG
    from service.tasks import load_tasks

    tasks = load_tasks(DEFAULT_CONFIG.parent / "tasks")
    assert set(RECIPES) == {"invoice", "receipt", "support_intent", "entities"}
    for r in RECIPES.values():
        assert r.task in tasks
        steps = " ".join(" ".join(a) for a in r.argv(tmp_path))
        assert "{" not in steps  # every placeholder filled
        for name in (*r.train, r.val):
            assert str(tmp_path / name.split("/")[0]) in steps, (r.name, name)


def test_concat_keeps_order_and_drops_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    (tmp_path / "b.jsonl").write_text('{"b": 1}')
    n = concat([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "all.jsonl")
    assert n == 3
    assert (tmp_path / "all.jsonl").read_text().splitlines() == ['{"a": 1}', '{"a": 2}', '{"b": 1}']


def test_build_runs_data_then_train_and_ships_with_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    ran: list[list[str]] = []

    def run(argv: list[str], log: list[dict[str, object]]) -> None:  # the commands, without training for real
        ran.append(argv)
        args = argv[3:]
        if args[0] == "data":
            out = Path(args[args.index("--out") + 1])
            out.write_text('{"text": "x", "output": {}}\n')
        else:
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True)
            save_file({"w": torch.ones(2, 2)}, str(out / "adapter_model.safetensors"))
            (out / "adapter_config.json").write_text("{}")
            (out / "training_card.json").write_text(json.dumps({"task": "invoice"}))
        log.append({"argv": argv[1:], "seconds": 0.5})

    monkeypatch.setattr(recipes, "_run", run)
    recipe = Recipe(
        name="demo",
        task="invoice",
        summary="two synthetic files",
        data=(("synth", "--out", "{work}/a.jsonl"), ("synth", "--out", "{work}/b.jsonl")),
        train=("a.jsonl",),
        val="b.jsonl",
        options=("--epochs", "1"),
        stages=(("--epochs", "1", "--learning_rate", "2e-4"),),
    )
    dst = build(recipe, tmp_path / "work", tmp_path / "shipped")
    assert [a[3] for a in ran] == ["data", "data", "train", "train"]
    first, train = ran[-2][3:], ran[-1][3:]
    assert train[train.index("--train") + 1].endswith("work/demo/train.all.jsonl")
    # the second stage continues the first's adapter, and the last stage's adapter is the one shipped
    assert train[train.index("--init_adapter") + 1] == first[first.index("--out") + 1]
    assert train[train.index("--out") + 1].endswith("adapter.stage2") and "--init_adapter" not in first
    # the stage runs with the recipe's options, its own after them (argparse: the later flag wins)
    assert train[-6:] == ["--epochs", "1", "--epochs", "1", "--learning_rate", "2e-4"]
    weights = dst / "adapter_model.safetensors"
    from safetensors.torch import load_file

    assert load_file(str(weights))["w"].dtype == torch.bfloat16
    record = json.loads((dst / "recipe.json").read_text())
    assert record["command"] == "python -m training.recipes demo"
    assert [s["argv"][:3] for s in record["steps"]] == [["extraction", "data", "synth"]] * 2 + [
        ["extraction", "train", "--task"]
    ] * 2
    assert record["cpu"]["model"] and "native_bf16" in record["cpu"]


def test_unknown_recipe_is_an_error_naming_the_known_ones(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["nope"])
    assert "invoice" in capsys.readouterr().err


def test_a_recipe_without_its_public_data_says_where_it_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipes, "SHARED", tmp_path / "absent")
    with pytest.raises(SystemExit, match="absent/sroie"):
        build(RECIPES["receipt"], tmp_path)
