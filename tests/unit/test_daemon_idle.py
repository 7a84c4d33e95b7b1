"""A daemon that is not balancing (one node, disabled) waits without waking up.

It wakes only when told to (stop, SIGHUP's reload, `autonumactl enable`/`disable`) or
when the systemd watchdog's next ping is due; its cost on a one-node machine is shown
for real by the systemd VM test (test_single_node_daemon_idles_says_why_...).
"""

import threading
import time

from test_cpu_hotplug import make_daemon

from autonumad.systemd_notify import Notifier


def idle_in_thread(d):
    done = threading.Event()
    thread = threading.Thread(target=lambda: (d._idle(), done.set()), daemon=True)
    thread.start()
    return done


def test_idle_waits_until_a_reload_wakes_it(tmp_path):
    d = make_daemon(tmp_path)
    d.runtime_enabled = False
    done = idle_in_thread(d)
    assert not done.wait(0.5)
    d._request_reload()
    assert done.wait(2)
    assert d.reload_requested


def test_idle_ends_at_once_on_stop_and_on_enable(tmp_path):
    d = make_daemon(tmp_path)
    d.runtime_enabled = False
    done = idle_in_thread(d)
    assert not done.wait(0.3)
    d.handle_enable({})
    assert done.wait(2) and d.balancing()
    done = idle_in_thread(d)
    assert not done.wait(0.3)
    d.stop()
    assert done.wait(2) and d.stop_event.is_set()


def test_a_signal_only_sets_flags_and_pokes_and_the_loop_turns_a_stop_into_stop_event(tmp_path):
    d = make_daemon(tmp_path)
    d._signal_stop()
    assert not d.stop_event.is_set() and d._wait(5.0)   # pending: no wait at all
    assert d._stopping() and d.stop_event.is_set()


def test_a_poke_before_the_pause_ends_it_at_once_and_only_once(tmp_path):
    d = make_daemon(tmp_path)
    d._poke()
    d._poke()
    assert d._wait(5.0)                                  # both bytes drained
    started = time.monotonic()
    assert not d._wait(0.2) and time.monotonic() - started >= 0.15


def test_idle_wakes_in_time_for_the_watchdog(tmp_path, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # pings every 0.25 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    d = make_daemon(tmp_path)
    d.notifier = Notifier()
    d.notifier.watchdog()
    started = time.monotonic()
    d._idle()
    assert 0.1 < time.monotonic() - started < 1.0


def test_next_ping_is_none_without_a_watchdog_and_half_the_interval_after_a_ping(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert Notifier().next_ping_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier()
    notifier.watchdog()
    assert 7.0 < notifier.next_ping_s() <= 7.5
