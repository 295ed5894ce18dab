"""``python -m benchmarks.update_step``: runs :func:`benchmarks.update_step.cli.main`."""

from __future__ import annotations

import sys

from benchmarks.update_step.cli import main

sys.exit(main())
