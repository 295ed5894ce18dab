"""Ctrl-C during a search: the first stops the trials in order, a second forces the stop.

Owns :class:`StopOnInterrupt` (the SIGINT handler the command line installs) and
:class:`SearchInterrupted` (what the orchestration raises once the stop is done).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any


class SearchInterrupted(Exception):
    """The search stopped on Ctrl-C; ``location`` is what ``--resume`` takes (None if no trial had started).

    ``forced``: a second Ctrl-C cut the orderly stop short.
    """

    def __init__(self, location: str | None, *, forced: bool) -> None:
        super().__init__(location)
        self.location = location
        self.forced = forced


TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


class StopOnInterrupt:
    """Ctrl-C during a search: the first stops it in order, a second forces the stop.

    While Tune runs the trials, the first SIGINT asks Tune to stop (through
    the SIGUSR1 handler Tune installs while it runs): the trials are
    stopped, the experiment state is saved, the tables are flushed, and
    :func:`~neqtune.search.experiment.finish_search` raises :class:`SearchInterrupted`. Outside of
    that, and for the second SIGINT, it raises ``KeyboardInterrupt`` at
    once. Tune's own messages, which would point at ``Tuner.restore``, are
    silenced from the first Ctrl-C on.

    Use as a context manager around :func:`~neqtune.search.experiment.run_search` or
    :func:`~neqtune.search.experiment.resume_search` in the main thread.
    """

    def __init__(self, echo: Any = print) -> None:
        self.echo = echo
        self.requested = False
        self.location: str | None = None
        self.in_fit = False
        self._previous: Any = None
        self._tune_setting: str | None = None

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            # Tune would put its own SIGINT handler in place of this one (and point at Tuner.restore).
            self._tune_setting = os.environ.get(TUNE_SIGINT)
            os.environ[TUNE_SIGINT] = "1"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            if self._tune_setting is None:
                os.environ.pop(TUNE_SIGINT, None)
            else:
                os.environ[TUNE_SIGINT] = self._tune_setting

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested or not self.in_fit:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        self.echo("neqtune: Ctrl-C: stopping the trials and saving the search (Ctrl-C again forces it)")
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler: end the run after the current step
