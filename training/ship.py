"""Copy a trained adapter into the repository's shipped set: weights cast to bf16 (half the bytes, what vLLM
serves anyway), config, training card and loss curve; refuses anything over the size budget.

    python -m training.ship var/adapters/support_intent training/adapters/support_intent
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

MAX_BYTES = 10 * 2**20
FILES = ("adapter_config.json", "training_card.json", "training_card.md", "loss.png")


def ship(src: Path, dst: Path, max_bytes: int = MAX_BYTES) -> Path:
    """Write the shipped copy of the adapter at `src` to `dst` (replaced whole); returns the weights file."""
    import torch
    from safetensors.torch import load_file, save_file

    if not (src / "adapter_model.safetensors").is_file() or not (src / "training_card.json").is_file():
        raise SystemExit(f"{src} is not a trained adapter folder (adapter_model.safetensors and training_card.json)")
    weights = load_file(str(src / "adapter_model.safetensors"))
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    out = partial / "adapter_model.safetensors"
    save_file({k: v.to(dtype=torch.bfloat16).contiguous() for k, v in weights.items()}, str(out))
    size = out.stat().st_size
    if size > max_bytes:
        shutil.rmtree(partial)
        raise SystemExit(f"{src}: {size} bytes in bf16, over the {max_bytes}-byte budget")
    for name in FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, partial / name)
    card = json.loads((partial / "training_card.json").read_text())
    card["shipped"] = {"from": str(src), "dtype": "bfloat16", "bytes": size}
    (partial / "training_card.json").write_text(json.dumps(card, indent=2, allow_nan=False))
    if dst.exists():
        shutil.rmtree(dst)
    partial.rename(dst)
    return dst / "adapter_model.safetensors"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    args = p.parse_args()
    out = ship(args.src, args.dst)
    print(f"shipped {out} ({out.stat().st_size} bytes)")  # noqa: T201


if __name__ == "__main__":
    main()
