"""Logging for the daemon: readable lines on stderr, or the journal with structured fields.

Decision lines carry extra fields (`extra={"target_pid": ..., "action": ...}`), which
go to the journal upper-cased (TARGET_PID=, ACTION=, ...), so
`journalctl -u autonumad ACTION=move` finds them. The upper-casing is ours: the
JournalHandler sends a record's attributes under the names they have, and journald
silently drops a field whose name is not upper case.
"""

from __future__ import annotations

import logging
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# What every record has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def upper_case_extra_fields(record: logging.LogRecord) -> bool:
    """Logging filter: give each `extra=` field of the record an upper-case twin for the journal."""
    for name, value in list(vars(record).items()):
        if name not in _RECORD_ATTRIBUTES and not name.isupper():
            setattr(record, name.upper(), value)
    return True


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
            handler.addFilter(upper_case_extra_fields)
            handler.setFormatter(logging.Formatter("%(message)s"))
    if not journal:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s autonumad %(levelname)s: %(message)s",
                                               "%H:%M:%S"))
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS[level])
