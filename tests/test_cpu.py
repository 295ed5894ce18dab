"""CPU process settings: freed tensor memory is kept and reused, not page-faulted in again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Allocates and fills a 64 MiB tensor six times; prints the minor page faults of the last four
# (the first two settle the heap: the second may still extend it while torch sets itself up).
PROBE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from neqtune.trainables.cpu import keep_freed_memory
if {keep}:
    assert keep_freed_memory() and keep_freed_memory()
def fill():
    torch.ones(16 * 2**20).sum()
fill()
fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(keep: bool) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), keep=keep)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_kept_memory_is_reused_without_page_faults() -> None:
    # a 64 MiB block is 16,384 pages of 4 KiB; glibc maps it afresh on every allocation by default
    assert minor_faults(keep=False) > 4 * 8_000
    assert minor_faults(keep=True) < 2_000
