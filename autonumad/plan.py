"""The plan: what the policy decided in one pass, each action with its reason.

This is the arrow between the `policy` box and the `actuator` box of the data flow:
`autonumad.policy.plan_pass` returns a `Plan`; the actuator applies its actions
(and `autonumad --dry-run` prints them with `describe()`); the plan's `state` is
handed back to the policy on the next pass. Plain frozen data, no behaviour beyond
formatting.

Processes are named by (pid, start_time) so that the actuator can catch PID reuse
between decision and action; `start_time` is whatever the adapter reads (clock
ticks since boot from /proc/PID/stat field 22).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TaskKey = tuple[int, int, int]
"""(pid, process start time, tid): one thread, safe against PID reuse."""

GroupKey = tuple[int, int, int]
"""(pid, process start time, page group id): one page group of one process."""


@dataclass(frozen=True)
class MoveTask:
    """Confine thread `tid` to the CPUs of `to_node`."""

    pid: int
    start_time: int
    tid: int
    comm: str
    from_node: int
    to_node: int
    reason: str

    def describe(self) -> str:
        return f"move {self._what()}: {self.reason}"

    def _what(self) -> str:
        return f"pid {self.pid} ({self.comm}) tid {self.tid} node {self.from_node} -> {self.to_node}"


@dataclass(frozen=True)
class ExchangeTasks:
    """Moves that belong together: a swap, a rotation, or a chain of moves in which
    each thread takes the place the next one leaves. Apply all or none."""

    moves: tuple[MoveTask, ...]
    reason: str

    def describe(self) -> str:
        return "exchange " + ", ".join(m._what() for m in self.moves) + f": {self.reason}"


@dataclass(frozen=True)
class MigratePages:
    """Move the pages of one page group of a process to `to_node`."""

    pid: int
    start_time: int
    comm: str
    group_id: int
    from_node: int
    to_node: int
    pages: int
    reason: str

    def describe(self) -> str:
        return (f"migrate pid {self.pid} ({self.comm}) group {self.group_id}, {self.pages} pages, "
                f"node {self.from_node} -> {self.to_node}: {self.reason}")


Action = MoveTask | ExchangeTasks | MigratePages


def task_moves(action: Action) -> tuple[MoveTask, ...]:
    """The thread moves of an action: an exchange's, a move itself, none of a page migration's."""
    if isinstance(action, ExchangeTasks):
        return action.moves
    return (action,) if isinstance(action, MoveTask) else ()


SCAN_VOTE = -1
"""PolicyState.group_window of a wish that did not come from sampled writes."""


@dataclass(frozen=True)
class PolicyState:
    """What one pass of the policy tells the next. Start with `PolicyState()`.

    task_moved_at: when each thread last moved for its own gain (snapshot time);
        such a thread is settled for settle_seconds. Threads that only made room
        in an exchange are not recorded.
    group_target: AutoNUMA's last_nid: the node each page group wanted to move to
        on the last pass. A group migrates only when this pass wants the same node.
    group_window: what each of last pass's wishes came from: the number of the
        sampling window that last saw the group written, for a wish made from sampled
        writes, or SCAN_VOTE for one made from where the threads run. Two wishes from
        sampled writes agree only when they come from different windows; a wish of
        either kind is confirmed only by one of the same kind.
    group_agreed: groups whose votes agreed on a node but that did not move (the
        migration budget ran out, no room, the rate limit deferred them): the next
        pass that still wants that node moves them without waiting for new votes.
    group_migrated_at: when each page group was last queued for migration; it is
        not migrated again within settle_seconds, so never straight back.
    """

    task_moved_at: Mapping[TaskKey, float] = field(default_factory=dict)
    group_target: Mapping[GroupKey, int] = field(default_factory=dict)
    group_window: Mapping[GroupKey, int] = field(default_factory=dict)
    group_agreed: Mapping[GroupKey, int] = field(default_factory=dict)
    group_migrated_at: Mapping[GroupKey, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """The actions of one pass, in the order to apply them, and the state for the next pass."""

    actions: tuple[Action, ...]
    state: PolicyState
    shared_memory: frozenset[tuple[int, int]] = frozenset()
    """(pid, start time) of the processes spread over nodes whose threads were seen sharing
    their memory (each writes all of it, numa01's threads): not split by writer. What a
    write-fault window shows of them is each page's first writer only, so their locality is
    the scan's: the share of their memory on each busy thread's node."""

    def describe(self) -> list[str]:
        """One log line per action."""
        return [action.describe() for action in self.actions]
