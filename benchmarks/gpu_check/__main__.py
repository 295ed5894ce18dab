"""``python -m benchmarks.gpu_check``: runs :func:`benchmarks.gpu_check.cli.main`."""

from __future__ import annotations

import sys

from benchmarks.gpu_check.cli import main

sys.exit(main())
