"""What one run of the update-step benchmark measures and where it writes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.update_step.conditions import MEMORY_SCHEMES


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and where to write it."""

    models: tuple[str, ...] = ("mbv2-w0.35", "mbv2", "resnet18")
    memory_models: tuple[str, ...] = tuple(MEMORY_SCHEMES)
    transformer_models: tuple[str, ...] = ("swin_t", "vit-s16")
    image_size: int = 128
    batch_size: int = 32
    repeats: int = 11
    warmup: int = 2
    threads: int = 2
    seed: int = 0
    out_dir: Path = Path("docs/benchmarks")
    name: str = "update_step"
