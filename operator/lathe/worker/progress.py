"""Progress of long stages: logged (stage, percent, ETA) and handed to an optional callback
`progress(stage: str, fraction: float, message: str)`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("lathe.worker")

ProgressFn = Callable[[str, float, str], None]


class Progress:
    def __init__(self, callback: ProgressFn | None = None):
        self.callback = callback
        self._started: dict[str, float] = {}
        self._logged: dict[str, tuple[float, float]] = {}

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        start = self._started.setdefault(stage, now)
        fraction = min(max(fraction, 0.0), 1.0)
        eta = ""
        if 0 < fraction < 1:
            eta = f", ETA {(now - start) * (1 - fraction) / fraction:.0f}s"
        last_t, last_f = self._logged.get(stage, (-1e9, -1.0))
        if fraction in (0.0, 1.0) or fraction - last_f >= 0.25 or now - last_t >= 10:
            self._logged[stage] = (now, fraction)
            log.info("[%s] %3.0f%%%s %s", stage, fraction * 100, eta, message)
        if self.callback is not None:
            try:
                self.callback(stage, fraction, message)
            except Exception:  # a broken callback must not break the run
                log.exception("progress callback failed")
