"""Copy a trained adapter into the repository's shipped set: weights cast to bf16 (half the bytes, what vLLM
serves anyway), config, training card and loss curve; refuses anything over the size budget.

    python -m training.ship var/adapters/support_intent training/adapters/support_intent
    python -m training.ship var/adapters/receipt-r64 training/adapters/receipt --rank 16   # 4x fewer bytes

`--rank K` ships an adapter trained at a higher rank as the best rank-K one (Eckart-Young): per layer the
update scale * B @ A is factored through QR of B and of A^T and the SVD of the small r x r core, the top K
singular directions are kept, and the factors are rescaled so that `lora_alpha == r == K` serves the same
update. A higher rank can train better while its update stays nearly low-rank; the card says how much of the
update's norm the cut kept (`shipped.rank`).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

MAX_BYTES = 10 * 2**20
FILES = ("adapter_config.json", "training_card.json", "training_card.md", "loss.png")


def truncate_rank(
    weights: dict[str, Any], config: dict[str, Any], rank: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The best rank-`rank` adapter for the LoRA `weights` (peft names: ...lora_A.weight, ...lora_B.weight) with
    its `config` (r, lora_alpha): new weights, new config, and what the cut kept (for the card)."""
    import torch

    if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), int | float):
        raise SystemExit("--rank: the adapter's config names no integer r and numeric lora_alpha")
    r, alpha = config["r"], float(config["lora_alpha"])
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_rslora") or config.get("use_dora"):
        raise SystemExit("--rank: only plain LoRA adapters (no rank/alpha patterns, rsLoRA or DoRA) can be cut")
    if not 1 <= rank <= r:
        raise SystemExit(f"--rank must be between 1 and the adapter's r ({r}), got {rank}")
    scale = alpha / r
    out = dict(weights)
    kept: list[float] = []
    for name_a in [k for k in weights if k.endswith("lora_A.weight")]:
        name_b = name_a.replace("lora_A.weight", "lora_B.weight")
        if name_b not in weights:
            raise SystemExit(f"--rank: {name_a} has no {name_b} beside it")
        a, b = weights[name_a].double(), weights[name_b].double()  # (r, in), (out, r)
        qb, rb = torch.linalg.qr(b)
        qa, ra = torch.linalg.qr(a.T)
        u, sv, vh = torch.linalg.svd(rb @ ra.T)
        total = float(sv.square().sum())
        kept.append(float(sv[:rank].square().sum()) / total if total > 0 else 1.0)
        root = (sv[:rank] * scale).sqrt()
        out[name_b] = ((qb @ u[:, :rank]) * root).to(weights[name_b].dtype).contiguous()
        out[name_a] = (root[:, None] * (vh[:rank] @ qa.T)).to(weights[name_a].dtype).contiguous()
    kept_norms = {"from_rank": r, "rank": rank, "layers": len(kept),
              "norm_kept_min": round(min(kept, default=1.0) ** 0.5, 4),
              "norm_kept_mean": round(sum(k ** 0.5 for k in kept) / max(1, len(kept)), 4)}  # fmt: skip
    return out, {**config, "r": rank, "lora_alpha": rank}, kept_norms


def ship(src: Path, dst: Path, max_bytes: int = MAX_BYTES, rank: int | None = None) -> Path:
    """Write the shipped copy of the adapter at `src` to `dst` (replaced whole); returns the weights file.
    `rank`: cut to the best adapter of that rank first (see the module's docstring)."""
    import torch
    from safetensors.torch import load_file, save_file

    if not (src / "adapter_model.safetensors").is_file() or not (src / "training_card.json").is_file():
        raise SystemExit(f"{src} is not a trained adapter folder (adapter_model.safetensors and training_card.json)")
    weights = load_file(str(src / "adapter_model.safetensors"))
    config, truncation = None, None
    if rank is not None:
        if not (src / "adapter_config.json").is_file():
            raise SystemExit(f"--rank: {src} has no adapter_config.json (its r and lora_alpha)")
        weights, config, truncation = truncate_rank(
            weights, json.loads((src / "adapter_config.json").read_text()), rank
        )
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
    if config is not None:
        (partial / "adapter_config.json").write_text(json.dumps(config, indent=2))
    card = json.loads((partial / "training_card.json").read_text())
    card["shipped"] = {"from": str(src), "dtype": "bfloat16", "bytes": size,
                       **({"rank": truncation} if truncation else {})}  # fmt: skip
    (partial / "training_card.json").write_text(json.dumps(card, indent=2, allow_nan=False))
    if dst.exists():
        shutil.rmtree(dst)
    partial.rename(dst)
    return dst / "adapter_model.safetensors"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--rank", type=int, help="Ship the best adapter of this rank (below the trained r).")
    args = p.parse_args()
    out = ship(args.src, args.dst, rank=args.rank)
    print(f"shipped {out} ({out.stat().st_size} bytes)")  # noqa: T201


if __name__ == "__main__":
    main()
