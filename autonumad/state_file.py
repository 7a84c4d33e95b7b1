"""The record of what autonumad changed, so that it can be undone even after a crash.

It holds the original value of `kernel.numa_balancing` (when the daemon turned it
off), that of `kernel.perf_event_paranoid` (when it lowered it) and, for every thread whose affinity the daemon set, the affinity it found and
the one it set. The file is rewritten atomically (temporary file + rename, mode
0600) after every change, so `kill -9` at any point leaves either the old or the
new record. A daemon restarted after a crash reads it back: a thread whose affinity
still equals what the daemon set is the daemon's own doing, not someone else's pin,
and its original affinity is the one to restore.

Threads are keyed by (pid, process start time, tid), so a reused PID never
inherits another process's record.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

STATE_VERSION = 1


@dataclass(frozen=True)
class ThreadKey:
    pid: int
    start_time: int
    tid: int

    def text(self) -> str:
        return f"{self.pid}:{self.start_time}:{self.tid}"

    @classmethod
    def parse(cls, text: str) -> "ThreadKey":
        pid, start, tid = (int(x) for x in text.split(":"))
        return cls(pid, start, tid)


@dataclass
class AffinityRecord:
    original: frozenset[int]
    applied: frozenset[int]
    comm: str = ""


@dataclass
class DaemonState:
    numa_balancing_original: str | None = None
    perf_event_paranoid_original: str | None = None
    affinities: dict[ThreadKey, AffinityRecord] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "version": STATE_VERSION,
            "numa_balancing_original": self.numa_balancing_original,
            "perf_event_paranoid_original": self.perf_event_paranoid_original,
            "affinities": {
                k.text(): {"original": sorted(r.original), "applied": sorted(r.applied), "comm": r.comm}
                for k, r in sorted(self.affinities.items(), key=lambda kv: kv[0].text())
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> "DaemonState":
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state file version {data.get('version')!r}, expected {STATE_VERSION}")
        affinities = {
            ThreadKey.parse(k): AffinityRecord(frozenset(v["original"]), frozenset(v["applied"]), v.get("comm", ""))
            for k, v in data.get("affinities", {}).items()
        }
        perf = data.get("perf_event_paranoid_original")
        return cls(data.get("numa_balancing_original"), None if perf is None else str(perf), affinities)


class StateFile:
    """Loads and atomically saves a DaemonState at `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> DaemonState:
        """The saved state; an empty one when there is no file. A corrupt file raises ValueError naming it."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return DaemonState()
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.path}: unreadable state file: {exc}") from None
        try:
            return DaemonState.from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{self.path}: bad state file: {exc}") from None

    def save(self, state: DaemonState) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state.to_json(), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
