"""Logging for the daemon: readable lines on stderr, or the journal with structured fields.

Decision lines carry extra fields (`extra={"target_pid": ..., "action": ...}`), which
the journal stores upper-cased (TARGET_PID=, ACTION=, ...), so
`journalctl -u autonumad ACTION=move` finds them.
"""

from __future__ import annotations

import logging
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(level: str, journal: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if journal:
        try:
            from systemd.journal import JournalHandler
        except ImportError:
            print("autonumad: --journal needs systemd-python; logging to stderr", file=sys.stderr)
            journal = False
        else:
            handler = JournalHandler(SYSLOG_IDENTIFIER="autonumad")
            handler.setFormatter(logging.Formatter("%(message)s"))
    if not journal:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s autonumad %(levelname)s: %(message)s",
                                               "%H:%M:%S"))
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS[level])
