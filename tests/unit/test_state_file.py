import json
import os
import stat

import pytest

from autonumad.state_file import AffinityRecord, DaemonState, StateFile, ThreadKey


def test_state_round_trips_and_is_private(tmp_path):
    sf = StateFile(str(tmp_path / "sub" / "state.json"))
    st = DaemonState("1", "3", {ThreadKey(10, 99, 11): AffinityRecord(frozenset({0, 1}), frozenset({1}), "app")})
    sf.save(st)
    assert sf.load() == st
    mode = stat.S_IMODE(os.stat(sf.path).st_mode)
    assert mode & 0o077 == 0


def test_missing_state_file_is_empty_state(tmp_path):
    assert StateFile(str(tmp_path / "none.json")).load() == DaemonState()


def test_corrupt_state_file_names_the_file(tmp_path):
    p = tmp_path / "state.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="state.json"):
        StateFile(str(p)).load()
    p.write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="version"):
        StateFile(str(p)).load()
