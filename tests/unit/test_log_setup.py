"""Logging set-up: decision fields reach the journal under names journald keeps."""

import logging

import pytest

from autonumad.log_setup import setup_logging

pytest.importorskip("systemd.journal")


@pytest.fixture
def journal_fields():
    """Each record the journal handler would send, as the fields it would send."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    setup_logging("info", journal=True)
    sent = []
    root.handlers[0].send = lambda text, /, **fields: sent.append(dict(fields, MESSAGE=text))
    yield sent
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved_handlers:
        root.addHandler(h)
    root.setLevel(saved_level)


def test_decision_fields_are_sent_upper_case_for_journalctl_matches(journal_fields):
    logging.getLogger("autonumad").info("move pid 42 (app) node 1 -> 0", extra={
        "target_pid": 42, "target_comm": "app", "action": "move", "from_node": 1, "to_node": 0,
        "reason": "its memory is on node 0", "result": "done"})
    fields = journal_fields[-1]
    assert fields["MESSAGE"] == "move pid 42 (app) node 1 -> 0"
    assert {k: fields[k] for k in ("TARGET_PID", "TARGET_COMM", "ACTION", "FROM_NODE", "TO_NODE", "REASON",
                                   "RESULT")} == {
        "TARGET_PID": 42, "TARGET_COMM": "app", "ACTION": "move", "FROM_NODE": 1, "TO_NODE": 0,
        "REASON": "its memory is on node 0", "RESULT": "done"}
    assert fields["SYSLOG_IDENTIFIER"] == "autonumad"


def test_a_plain_line_gets_no_invented_fields(journal_fields):
    logging.getLogger("autonumad").info("stopping")
    fields = journal_fields[-1]
    assert not {"ACTION", "TARGET_PID", "NAME", "MSG", "LEVELNAME"} & set(fields)
