"""Scan pacing with a fake wall clock and CPU clock: batches, pauses, the CPU ceiling."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autonumad.config import ScanConfig
from autonumad.scan_pacing import ScanBudget


class Clocks:
    """A wall clock that sleeping advances, and a CPU clock that work advances."""

    def __init__(self):
        self.wall = 1000.0
        self.cpu = 5.0
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.wall += seconds

    def work(self, cpu_seconds):
        self.wall += cpu_seconds
        self.cpu += cpu_seconds

    def budget(self, **kwargs):
        return ScanBudget(clock=lambda: self.wall, cpu_clock=lambda: self.cpu, sleep=self.sleep, **kwargs)


def test_grants_a_batch_then_pauses_scan_sleep():
    c = Clocks()
    b = c.budget(pages_to_scan=1000, scan_sleep_millisecs=100, cpu_ceiling_percent=100)
    assert b.take(600) == 600
    assert b.take(600) == 400          # what is left of the batch
    assert c.sleeps == []
    assert b.take(600) == 600          # a new batch, after a pause
    assert c.sleeps == [pytest.approx(0.1)]
    assert b.counters.pages_scanned == 1600 and b.counters.pauses == 1


def test_nothing_wanted_nothing_granted_no_pause():
    c = Clocks()
    b = c.budget(pages_to_scan=10)
    b.take(10)
    assert b.take(0) == 0 and c.sleeps == []


def test_end_of_pass_pauses_pass_sleep_and_starts_a_fresh_batch():
    c = Clocks()
    b = c.budget(pages_to_scan=1000, scan_sleep_millisecs=100, scan_sleep_pass_millisecs=10000,
                 cpu_ceiling_percent=100)
    b.take(700)
    b.end_pass()
    assert c.sleeps == [pytest.approx(10.0)]
    assert b.counters.full_scans == 1
    assert b.take(1000) == 1000 and len(c.sleeps) == 1


def test_cpu_ceiling_stretches_the_pause():
    c = Clocks()
    b = c.budget(pages_to_scan=1000, scan_sleep_millisecs=100, cpu_ceiling_percent=5)
    b.take(1000)
    c.work(0.05)                       # 50 ms of CPU for the batch
    b.take(1)
    # 0.05 s of CPU may be at most 5 % of (0.05 s of work + the pause): pause = 0.95 s
    assert c.sleeps == [pytest.approx(0.95)]
    assert b.counters.throttled_s == pytest.approx(0.85)
    assert b.counters.cpu_s == pytest.approx(0.05)


def test_page_moves_are_left_out_of_the_ceiling():
    c = Clocks()
    b = c.budget(pages_to_scan=1000, scan_sleep_millisecs=100, cpu_ceiling_percent=5)
    b.take(1000)
    c.work(2.0)                        # 2 s of CPU in move_pages: the migration rate limit's business
    b.exclude_cpu(2.0)
    b.take(1)
    assert c.sleeps == [pytest.approx(0.1)]
    assert b.counters.excluded_cpu_s == pytest.approx(2.0) and b.counters.throttled_s == pytest.approx(0)


def test_cheap_batches_keep_the_nominal_pause():
    c = Clocks()
    b = c.budget(pages_to_scan=1000, scan_sleep_millisecs=100, cpu_ceiling_percent=5)
    b.take(1000)
    c.work(0.001)
    b.take(1)
    assert c.sleeps == [pytest.approx(0.1)]
    assert b.counters.throttled_s == pytest.approx(0.0)


def test_indivisible_work_overdraws_and_pauses_once_per_batch_owed():
    c = Clocks()
    b = c.budget(pages_to_scan=1000, scan_sleep_millisecs=100, cpu_ceiling_percent=100)
    b.charge(2500)                     # a numa_maps read worth 2.5 batches
    assert b.take(10) == 10
    assert len(c.sleeps) == 2          # -1500 -> -500 -> 500 left
    assert b.take(1000) == 490


def test_debt_carries_over_a_pass_boundary():
    c = Clocks()
    b = c.budget(pages_to_scan=1000, scan_sleep_millisecs=100, cpu_ceiling_percent=100)
    b.charge(1300)
    b.end_pass()
    assert b.take(1000) == 700


def test_runtime_knob_change_takes_effect_at_the_next_batch():
    c = Clocks()
    b = c.budget(pages_to_scan=1000, scan_sleep_millisecs=100, cpu_ceiling_percent=100)
    b.take(1000)
    b.pages_to_scan = 50
    b.scan_sleep_millisecs = 20
    assert b.take(1000) == 50
    assert c.sleeps == [pytest.approx(0.02)]


def test_from_config():
    b = ScanBudget.from_config(ScanConfig(pages_to_scan=4096, scan_sleep_millisecs=50,
                                          scan_sleep_pass_millisecs=2000, cpu_ceiling_percent=2.5))
    assert (b.pages_to_scan, b.scan_sleep_millisecs, b.scan_sleep_pass_millisecs, b.cpu_ceiling_percent) == (
        4096, 50, 2000, 2.5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        ScanBudget(pages_to_scan=0)
    with pytest.raises(ValueError):
        ScanBudget(cpu_ceiling_percent=0)


@settings(max_examples=60, deadline=None)
@given(ceiling=st.floats(0.5, 50), ns_per_page=st.integers(50, 2000),
       wants=st.lists(st.integers(1, 50000), min_size=20, max_size=60))
def test_a_scan_loop_stays_under_the_cpu_ceiling(ceiling, ns_per_page, wants):
    c = Clocks()
    b = c.budget(pages_to_scan=32768, scan_sleep_millisecs=100, scan_sleep_pass_millisecs=1000,
                 cpu_ceiling_percent=ceiling)
    start_wall, start_cpu = c.wall, c.cpu
    for i, want in enumerate(wants):
        while want:
            got = b.take(want)
            c.work(got * ns_per_page * 1e-9)
            want -= got
        if i % 10 == 9:
            b.end_pass()
    b.end_pass()
    used = c.cpu - start_cpu
    assert used / (c.wall - start_wall) <= ceiling / 100 + 1e-9


def test_idle_time_is_credit_for_a_burst_then_the_ceiling_holds():
    c = Clocks()
    b = c.budget(pages_to_scan=10, scan_sleep_millisecs=100, scan_sleep_pass_millisecs=10000,
                 cpu_ceiling_percent=5, credit_window_s=30)
    b.take(10)
    c.work(0.01)
    b.end_pass()                      # quiet passes earn credit, up to 5% of 30 s
    b.take(10)
    c.work(0.01)
    b.end_pass()
    assert c.sleeps[-1] == pytest.approx(10.0)
    b.take(10)
    c.work(1.0)                       # a burst of 1 s of CPU: paid from credit, no stretched pause
    b.end_pass()
    assert c.sleeps[-1] == pytest.approx(10.0)
    for _ in range(4):                # sustained work: the ceiling holds again
        b.take(10)
        c.work(1.0)
        b.end_pass()
    assert c.sleeps[-1] == pytest.approx(1.0 / 0.05 - 1.0)


def test_a_daemon_just_started_has_full_credit_for_its_first_burst():
    c = Clocks()
    b = c.budget(pages_to_scan=10, scan_sleep_millisecs=100, scan_sleep_pass_millisecs=1000,
                 cpu_ceiling_percent=5, credit_window_s=30)
    b.take(10)
    c.work(1.4)                       # under the 1.5 s of credit: no stretched pause
    b.end_pass()
    assert c.sleeps[-1] == pytest.approx(1.0) and not b.throttled
    b.take(10)
    c.work(0.5)                       # past it: stretched
    b.end_pass()
    assert c.sleeps[-1] > 1.0 and b.throttled


def test_a_pause_cut_short_is_not_counted_as_slept_against_the_ceiling():
    class Interrupted(Exception):
        pass

    c = Clocks()
    cut = []

    def sleep_a_second_then_wake(seconds):
        c.sleep(1.0)
        cut.append(seconds - 1.0)
        raise Interrupted

    b = ScanBudget(clock=lambda: c.wall, cpu_clock=lambda: c.cpu, sleep=sleep_a_second_then_wake,
                   pages_to_scan=1000, scan_sleep_millisecs=100, scan_sleep_pass_millisecs=10000,
                   cpu_ceiling_percent=5, credit_window_s=0)
    b.take(1000)
    c.work(0.05)
    with pytest.raises(Interrupted):
        b.end_pass()                   # a 10 s pause, woken after 1 s
    assert not b.throttled
    b.cut_pause_short(cut[0])
    assert b.take(1000) == 1000        # the next pass starts with a fresh batch
    b.sleep = c.sleep
    c.work(0.5)                        # a costly first batch right after the short pause
    b.take(1)
    # 0.5 s of CPU in a 0.5 s window: the ceiling stretches the pause to 0.5 / 5 % - 0.5 = 9.5 s;
    assert c.sleeps[-1] == pytest.approx(9.5) and b.throttled


def test_restart_window_leaves_start_up_cpu_out_of_the_ceiling():
    clock, cpu, slept = [0.0], [0.0], []
    budget = ScanBudget(pages_to_scan=10, scan_sleep_pass_millisecs=1000, cpu_ceiling_percent=5.0,
                        clock=lambda: clock[0], cpu_clock=lambda: cpu[0], sleep=slept.append)
    cpu[0] = clock[0] = 2.0          # start-up: 2 CPU s
    budget.restart_window()
    cpu[0] += 0.01
    clock[0] += 0.2
    budget.end_pass()
    assert slept == [1.0]            # no stretch for the start-up's CPU
