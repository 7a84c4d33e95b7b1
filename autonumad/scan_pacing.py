"""Scan pacing: how many pages the scanner may sample now, and how long it pauses.

The statistics box's throttle, after AutoNUMA's knuma_scand: sample up to
`pages_to_scan` pages in a batch, pause `scan_sleep_millisecs`, and after a full
pass over every process pause `scan_sleep_pass_millisecs`. A "page" here is one
page whose node is queried (one sample), the unit the scanner's cost grows with.

On top of that, a ceiling on the daemon's own CPU use: at every pause the budget
looks at the process CPU time (`cpu_clock`, time.process_time by default) spent
since the previous pause ended, and stretches the pause so that CPU time over
(work + pause) stays under `cpu_ceiling_percent` of one CPU. Everything the daemon
did in that window counts (scanning, reading /proc, policy), which is what the
ceiling is about, except page moves (`exclude_cpu`): the kernel copies pages in the
mover's context, and their pace is the migration rate limit's to set (as AutoNUMA
paces knuma_migrated apart from knuma_scand). With `credit_window_s` the ceiling holds over that many seconds
rather than window by window: time spent idle under the ceiling is credit (at most
the ceiling's share of `credit_window_s`) that a later burst of work may spend, so
a daemon that has been quiet reacts to a new misplacement at once, then slows down.

The scan loop calls `take(wanted)` before each chunk of sampling and samples no
more than it returns; `charge(pages)` books work that cannot be split (a whole
numa_maps read), which may overdraw the batch and so lengthen the next pauses;
`end_pass()` after the last process of a pass. Clock, CPU clock and sleep are
injectable: tests use a fake clock, the daemon an interruptible wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("autonumad.scan_pacing")


@dataclass
class PacingCounters:
    """AutoNUMA-style counters (pages_scanned, full_scans) plus where the time went."""

    pages_scanned: int = 0
    full_scans: int = 0
    pauses: int = 0
    slept_s: float = 0.0
    throttled_s: float = 0.0     # the part of slept_s added by the CPU ceiling
    cpu_s: float = 0.0           # daemon CPU time measured between pauses
    excluded_cpu_s: float = 0.0  # CPU time of page moves, paced by the migration rate limit instead


class ScanBudget:
    def __init__(self, pages_to_scan: int = 32768, scan_sleep_millisecs: int = 100,
                 scan_sleep_pass_millisecs: int = 10000, cpu_ceiling_percent: float = 5.0,
                 credit_window_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time,
                 sleep: Callable[[float], None] = time.sleep):
        if pages_to_scan < 1 or cpu_ceiling_percent <= 0:
            raise ValueError("pages_to_scan must be at least 1 and cpu_ceiling_percent above 0")
        self.pages_to_scan = pages_to_scan
        self.scan_sleep_millisecs = scan_sleep_millisecs
        self.scan_sleep_pass_millisecs = scan_sleep_pass_millisecs
        self.cpu_ceiling_percent = cpu_ceiling_percent
        self.credit_window_s = credit_window_s
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.sleep = sleep
        self.counters = PacingCounters()
        self._left = pages_to_scan
        self.throttled = False  # the pause under way is longer than asked, for the CPU ceiling
        self._pausing = (0.0, 0.0)  # (balance before it, its length) of the pause under way
        self.restart_window()

    def restart_window(self) -> None:
        """Count from now, with full credit: the daemon's start-up (imports, socket, sysctls)
        is no scanning work, and a daemon that just started has used nothing, like one that
        has been idle for `credit_window_s` (counted otherwise, the first passes, when
        balancing matters most, would be the ones stretched)."""
        # CPU seconds spent beyond the ceiling so far (negative: credit)
        self._balance = -self.cpu_ceiling_percent / 100.0 * self.credit_window_s
        self._window_wall = self.clock()
        self._window_cpu = self.cpu_clock()

    @classmethod
    def from_config(cls, scan: Any, **clocks: Any) -> ScanBudget:
        """From an `autonumad.config.ScanConfig` (the [scan] section)."""
        return cls(scan.pages_to_scan, scan.scan_sleep_millisecs, scan.scan_sleep_pass_millisecs,
                   scan.cpu_ceiling_percent, **clocks)

    def take(self, wanted: int) -> int:
        """Pages that may be sampled now (1..wanted), pausing first if the batch is spent."""
        if wanted <= 0:
            return 0
        while self._left <= 0:
            self._pause(self.scan_sleep_millisecs)
            self._left += self.pages_to_scan
        granted = min(wanted, self._left)
        self._left -= granted
        self.counters.pages_scanned += granted
        return granted

    def charge(self, pages: int) -> None:
        """Book indivisible work worth `pages` samples; the batch may go into debt."""
        self._left -= pages
        self.counters.pages_scanned += pages

    def exclude_cpu(self, seconds: float) -> None:
        """CPU time spent on work that has its own pacing (page moves, under the migration
        rate limit): left out of the ceiling's count."""
        self._window_cpu += max(0.0, seconds)
        self.counters.excluded_cpu_s += max(0.0, seconds)

    def end_pass(self) -> None:
        """A full pass is done: pause scan_sleep_pass_millisecs (or longer, for the
        ceiling) and start the next pass with a fresh batch."""
        self.counters.full_scans += 1
        self._left = min(self._left, 0) + self.pages_to_scan  # first: the sleep may end the pause early
        self._pause(self.scan_sleep_pass_millisecs)

    def cut_pause_short(self, unslept_s: float) -> None:
        """The pause under way ends `unslept_s` early (new work came): the ceiling does not
        count the part not slept, and the next window starts now."""
        ceiling = self.cpu_ceiling_percent / 100.0
        before, pause = self._pausing
        slept = max(0.0, pause - max(0.0, unslept_s))
        self._balance = max(-ceiling * self.credit_window_s, before - ceiling * slept)
        self.counters.pauses += 1
        self._window_wall = self.clock()
        self._window_cpu = self.cpu_clock()

    def _pause(self, millisecs: int) -> None:
        wall = self.clock() - self._window_wall
        cpu = self.cpu_clock() - self._window_cpu
        base = millisecs / 1000.0
        ceiling = self.cpu_ceiling_percent / 100.0
        # cpu / (wall + pause) <= ceiling, less any credit  <=>  pause >= balance / ceiling
        credit = ceiling * self.credit_window_s
        balance = max(-credit, self._balance + cpu - ceiling * wall)
        pause = max(base, balance / ceiling)
        self._balance = max(-credit, balance - ceiling * pause)
        self.throttled = pause > base
        if self.throttled:
            log.debug("pause %.1f s instead of %.1f s: %.2f CPU s in the last %.1f s, over the %g%% ceiling",
                      pause, base, cpu, wall, self.cpu_ceiling_percent)
        self._pausing = (balance, pause)  # for cut_pause_short
        self.sleep(pause)
        self.counters.pauses += 1
        self.counters.slept_s += pause
        self.counters.throttled_s += pause - base
        self.counters.cpu_s += cpu
        self._window_wall = self.clock()
        self._window_cpu = self.cpu_clock()
