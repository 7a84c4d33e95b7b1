"""sd_notify for the daemon: READY, STATUS, WATCHDOG, STOPPING; silent when not under systemd."""

from __future__ import annotations

import os
import time

try:
    from systemd import daemon as _sd_daemon
except ImportError:  # systemd-python is optional outside a service
    _sd_daemon = None


class Notifier:
    def __init__(self) -> None:
        self.active = _sd_daemon is not None and bool(os.environ.get("NOTIFY_SOCKET"))
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        pid = os.environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            usec = 0
        self.watchdog_interval = usec / 2e6 if usec else 0.0  # ping at half the timeout
        self._last_ping = 0.0
        self._last_status = ""

    def _send(self, text: str) -> None:
        if self.active:
            _sd_daemon.notify(text)

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self._send(f"STATUS={status}")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def reloaded(self) -> None:
        self._send("READY=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping: restoring what autonumad changed")

    def next_ping_s(self) -> float | None:
        """Seconds until `watchdog` should be called again; None without a watchdog."""
        if not self.watchdog_interval:
            return None
        return self._last_ping + self.watchdog_interval / 2 - time.monotonic()

    def watchdog(self) -> None:
        """Ping the watchdog if half its timeout has passed; called from the main loop only."""
        if not self.watchdog_interval:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval / 2:
            self._last_ping = now
            self._send("WATCHDOG=1")
