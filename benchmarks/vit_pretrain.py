"""Pretrain the small ViT in full on Fashion-MNIST: the start of the offline reproduction of TraDy's SwinT rows.

``python -m benchmarks.vit_pretrain`` trains neqtune's ``vit`` (the shape in
:data:`SHAPE`, at :data:`IMAGE_SIZE` px) in full on Fashion-MNIST (Debian's
``dataset-fashion-mnist``, 60,000 train / 10,000 test images) on the CPU,
through neqtune's own trainer (``policy: full``), so the images go through
the same pipeline, resize and normalisation as the fine-tuning on digits
that starts from them. Without ImageNet weights offline this is the
reproduction's stand-in for SwinT's ImageNet pretraining.

It prints one line per epoch (train loss and top-1, test top-1, time) and
writes, under ``--out`` (default ``results/pretrained/``):

- ``vit-fashion-mnist-16px.pt``: the model's state dict, what
  ``model.pretrained: <file>`` loads (:func:`neqtune.trainables.models.registry.load_checkpoint`;
  the 10-way head loads too, and a head of another size would be re-initialised);
- ``vit-fashion-mnist-16px.json``: the record of the run (command, seed,
  epochs, per-epoch figures, final test top-1, wall time, torch version).

The spaces of ``spaces/vit_digits/`` start from that file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGE_SIZE = 16
SHAPE: dict[str, Any] = {"patch_size": 4, "depth": 4, "width": 64, "heads": 4, "mlp_ratio": 2.0}
"""4 x 4 patches of a 16 px image: 16 tokens and the class token, 4 blocks of width 64 (4 heads of 16), MLP 128."""
STEM = f"vit-fashion-mnist-{IMAGE_SIZE}px"


def config(*, epochs: int, warmup: int, seed: int) -> dict[str, Any]:
    """The trial config of the pretraining: Adam with a linear warm-up, then cosine to 0; all of the network trains."""
    return {
        "data": {"name": "fashion-mnist", "root": FASHION_ROOT, "image_size": IMAGE_SIZE, "batch_size": 128, "velocity_images": 10,
                 "val_fraction": 0.05, "augment": "batched", "workers": 0},
        "model": {"name": "vit", "pretrained": None, **SHAPE},
        # Adam, not the fine-tuning's plain SGD: a transformer trained from scratch needs it to learn in a few epochs.
        "training": {"epochs": epochs, "warmup_epochs": warmup, "warmup_lr": 0.0, "optimizer": "adam", "lr": 2e-3, "final_lr": 0.0,
                     "weight_decay": 0.0, "seed": seed, "device": "cpu"},
        "budget": {"policy": "full"},
    }  # fmt: skip


def pretrain(out: Path, *, epochs: int, warmup: int, seed: int, command: str) -> dict[str, Any]:
    """Train the ViT (module docstring), save its state dict and the record; returns the record."""
    from neqtune.trainables import train

    trial = config(epochs=epochs, warmup=warmup, seed=seed)
    rows: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    started = time.monotonic()

    def report(metrics: dict[str, Any], state: Any) -> None:
        last["model"] = state()["model"]
        row = {key: metrics[key] for key in ("epoch", "lr", "train_loss", "train_top1", "val_top1", "test_top1", "epoch_time_s")}
        rows.append(row)
        print(f"epoch {row['epoch']}/{warmup + epochs}: train loss {row['train_loss']:.4f}, train top-1 {row['train_top1']:.2f} %, "
              f"test top-1 {row['test_top1']:.2f} %, {row['epoch_time_s']:.0f} s", flush=True)  # fmt: skip

    train(trial, report)
    wall = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{STEM}.pt"
    torch.save(last["model"], weights)
    record = {
        "command": command,
        "model": {"name": "vit", **SHAPE},
        "image_size": IMAGE_SIZE,
        "data": "fashion-mnist (Debian dataset-fashion-mnist; 56,991 train after the val (2,999) and velocity (10) splits, 10,000 test)",
        "seed": seed,
        "epochs": warmup + epochs,
        "warmup_epochs": warmup,
        "threads": torch.get_num_threads(),
        "final_test_top1": rows[-1]["test_top1"],
        "wall_time_s": round(wall, 1),
        "weights": str(weights.relative_to(ROOT)) if weights.is_relative_to(ROOT) else str(weights),
        "weights_bytes": weights.stat().st_size,
        "parameters": sum(t.numel() for t in last["model"].values()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "epochs_run": rows,
        "config": trial,
    }
    (out / f"{STEM}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"weights: {weights} ({record['weights_bytes'] / 1e6:.2f} MB); final test top-1 {record['final_test_top1']:.2f} %; "
          f"{wall / 60:.1f} min")  # fmt: skip
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vit_pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="cosine epochs (after the warm-up; the committed run: 1 + 4)")
    parser.add_argument("--warmup", type=int, default=1, help="linear warm-up epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the committed run: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "pretrained")
    args = parser.parse_args(argv)
    if not Path(FASHION_ROOT).is_dir():
        print(f"vit_pretrain: no Fashion-MNIST at {FASHION_ROOT} (apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    command = " ".join(["python -m benchmarks.vit_pretrain", *(argv if argv is not None else sys.argv[1:])])
    pretrain(args.out.resolve(), epochs=args.epochs, warmup=args.warmup, seed=args.seed, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
