"""The daemon's page moves: the groups of one process between the same two nodes go to
the actuator together (one PID check pair, one call of the C mover), each logged with its
own result; runs to different nodes go at once, one mover thread per destination node;
the rate limit's leftovers are deferred, refused groups set aside."""

import logging
import threading
from dataclasses import replace

from autonumad.kernel.numa_calls import RangeMoves
from autonumad.plan import MigratePages, Plan
from autonumad.policy_snapshot import GroupRange

from test_cpu_hotplug import make_daemon

PAGE = 4096
REGION = 2 << 20


class FakeOps:
    """Every page of every range sits on the run's source node until moved; pages in
    `refuse` stay (-EBUSY). Mirrors ane_move_ranges: from `resume`, at most `limit` pages."""

    def __init__(self, refuse=(), gate=None):
        self.refuse = set(refuse)
        self.moves = []          # per call: pages handed to the kernel
        self.start_checks = 0
        self.moved_pages = set()
        self.gate = gate         # a Barrier: each mover's first call waits for the others'
        self.threads = set()

    def start_time(self, pid):
        self.start_checks += 1
        return 77

    def move_ranges(self, pid, ranges, from_node, to_node, limit, resume):
        thread = threading.current_thread().ident
        if self.gate is not None and thread not in self.threads:
            self.gate.wait(timeout=5)        # each mover's first call: both must be under way
        self.threads.add(thread)
        tried, moved, failures, handed = [0] * len(ranges), [0] * len(ranges), {}, []
        r, addr = resume
        while r < len(ranges) and len(handed) < limit:
            start, end = ranges[r]
            addr = max(addr, start)
            if addr >= end:
                r, addr = r + 1, 0
                continue
            if (pid, addr) not in self.moved_pages:
                handed.append(addr)
                tried[r] += 1
                if addr in self.refuse:
                    failures[16] = failures.get(16, 0) + 1
                else:
                    moved[r] += 1
                    self.moved_pages.add((pid, addr))
            addr += PAGE
        self.moves.append(handed)
        return RangeMoves(tried, moved, failures, None, sum(moved), (r, addr))

def migration(gid, from_node=1, to_node=0, pid=10):
    return MigratePages(pid, 77, "app", gid, from_node, to_node, 512, "its writers run there")


def test_groups_of_one_process_between_two_nodes_move_in_one_batch(tmp_path, caplog):
    d = make_daemon(tmp_path)
    ops = FakeOps(refuse=set(range(3 * REGION, 4 * REGION, PAGE)))   # group 3's pages are busy
    d.actuator.ops = ops
    d.groups = {(10, 77): {g: GroupRange(g * REGION, (g + 1) * REGION, 1) for g in (1, 2, 3)},
                (11, 77): {9: GroupRange(9 * REGION, 10 * REGION, 1)}}
    actions = (migration(1), migration(2), migration(3), migration(9, pid=11))
    caplog.set_level(logging.INFO, logger="autonumad")
    lines = d.apply(Plan(actions, d.policy_state))
    assert sorted(len(batch) for batch in ops.moves) == [512, 3 * 512]   # one call per process
    assert ops.start_checks == 4                                     # before and after each call
    assert [line.rsplit("[", 1)[1] for line in lines] == [
        "done, 512 pages moved]", "done, 512 pages moved]", "done, 0 pages moved]", "done, 512 pages moved]"]
    assert (10, 77, 3) in d.stuck_groups and (10, 77, 1) not in d.stuck_groups


def test_a_group_most_of_whose_pages_are_refused_is_set_aside_too(tmp_path):
    d = make_daemon(tmp_path)
    d.actuator.ops = FakeOps(refuse=set(range(REGION, REGION + 500 * PAGE, PAGE)))  # shared after fork
    d.groups = {(10, 77): {1: GroupRange(REGION, 2 * REGION, 1), 2: GroupRange(2 * REGION, 3 * REGION, 1)}}
    lines = d.apply(Plan((migration(1), migration(2)), d.policy_state))
    assert lines[0].endswith("[done, 12 pages moved]") and lines[1].endswith("[done, 512 pages moved]")
    assert (10, 77, 1) in d.stuck_groups and (10, 77, 2) not in d.stuck_groups


def test_a_run_most_of_whose_pages_are_refused_sets_the_process_s_groups_on_that_node_aside(tmp_path):
    from autonumad.daemon import STUCK_SOURCE_MIN_TRIED
    d = make_daemon(tmp_path)
    shared = set(range(REGION, REGION + 500 * PAGE, PAGE)) | set(range(2 * REGION, 2 * REGION + 100 * PAGE, PAGE))
    d.actuator.ops = FakeOps(refuse=shared)                      # shared with its parent since a fork
    d.groups = {(10, 77): {1: GroupRange(REGION, 2 * REGION, 1), 2: GroupRange(2 * REGION, 2 * REGION + 120 * PAGE, 1)},
                (11, 77): {3: GroupRange(3 * REGION, 3 * REGION + 40 * PAGE, 1)}}
    d.actuator.ops.refuse |= set(range(3 * REGION, 3 * REGION + 40 * PAGE, PAGE))
    lines = d.apply(Plan((migration(1), migration(2), migration(3, pid=11)), d.policy_state))
    assert [line.rsplit("[", 1)[1] for line in lines] == [
        "done, 12 pages moved]", "done, 20 pages moved]", "done, 0 pages moved]"]
    assert (10, 77, 1) in d.stuck_sources                      # 32 of 632 moved: node 1's groups wait
    assert 40 < STUCK_SOURCE_MIN_TRIED and (11, 77, 1) not in d.stuck_sources   # too few tried to tell


def test_a_group_with_nothing_left_on_its_node_is_done_and_its_regions_follow(tmp_path):
    from autonumad.processes import ProcessKey
    from autonumad.task_stats import RegionTouches
    d = make_daemon(tmp_path)
    ops = FakeOps(refuse={REGION})                 # one busy page stays behind
    d.actuator.ops = ops
    d.sampler.regions = {ProcessKey(10, 77): {REGION: RegionTouches({5: 3}, {1: 3}),
                                              2 * REGION: RegionTouches({5: 1}, {1: 1})}}
    d.groups = {(10, 77): {1: GroupRange(REGION, 2 * REGION, 1), 2: GroupRange(2 * REGION, 2 * REGION, 1)}}
    lines = d.apply(Plan((migration(1), migration(2)), d.policy_state))
    assert lines[0].endswith("[done, 511 pages moved]") and lines[1].endswith("[done, 0 pages moved]")
    assert d.sampler.regions[ProcessKey(10, 77)][REGION].nodes == {0: 3}


def test_what_the_rate_limit_did_not_grant_is_deferred_not_set_aside(tmp_path):
    d = make_daemon(tmp_path)
    d.actuator.ops = FakeOps()
    d.actuator.rate_limit.clock = lambda: 0.0      # frozen: no tokens come back
    d.actuator.rate_limit.last = 0.0
    d.actuator.rate_limit.tokens = 600
    d.migrate_wait_s = 0.05
    d.groups = {(10, 77): {g: GroupRange(g * REGION, (g + 1) * REGION, 1) for g in (1, 2)}}
    lines = d.apply(Plan((migration(1), migration(2)), d.policy_state))
    assert lines[0].endswith("[done, 512 pages moved]")
    assert lines[1].endswith("[done, 88 pages moved]")
    d.groups = {(10, 77): {g: GroupRange(g * REGION, (g + 1) * REGION, 1) for g in (4, 5)}}
    queued = replace(d.policy_state, group_migrated_at={(10, 77, 4): 1.0, (10, 77, 5): 1.0})
    deferred = Plan((migration(4), migration(5)), queued)
    results = d._act(deferred)
    assert results == ["deferred: migration rate limit, 0 pages moved"] * 2
    assert not d.stuck_groups
    after = d._deferred_stay_agreed(deferred, results)     # neither settled nor in need of new votes
    assert after.group_migrated_at == {} and after.group_agreed == {(10, 77, 4): 0, (10, 77, 5): 0}


def test_runs_to_different_nodes_move_at_once_one_mover_per_node(tmp_path):
    d = make_daemon(tmp_path)
    ops = FakeOps(gate=threading.Barrier(2))     # each call waits for the other mover's
    d.actuator.ops = ops
    d.groups = {(10, 77): {1: GroupRange(REGION, 2 * REGION, 1), 2: GroupRange(2 * REGION, 3 * REGION, 0)}}
    lines = d.apply(Plan((migration(1, 1, 0), migration(2, 0, 1)), d.policy_state))
    assert [line.rsplit("[", 1)[1] for line in lines] == ["done, 512 pages moved]", "done, 512 pages moved]"]
    assert len(ops.threads) == 2 and d.actuator.counters["pages_migrated"] == 1024


def test_a_mover_that_fails_fails_its_run_only(tmp_path, caplog):
    d = make_daemon(tmp_path)
    ops = FakeOps()
    real = ops.move_ranges

    def broken(pid, ranges, from_node, to_node, limit, resume):
        if to_node == 1:
            raise RuntimeError("bug")
        return real(pid, ranges, from_node, to_node, limit, resume)

    ops.move_ranges = broken
    d.actuator.ops = ops
    d.groups = {(10, 77): {1: GroupRange(REGION, 2 * REGION, 1), 2: GroupRange(2 * REGION, 3 * REGION, 0)}}
    lines = d.apply(Plan((migration(1, 1, 0), migration(2, 0, 1)), d.policy_state))
    assert lines[0].endswith("[done, 512 pages moved]") and lines[1].endswith("[failed: bug, 0 pages moved]")


def test_the_pass_after_one_that_awaits_a_window_or_a_second_vote_comes_sooner(tmp_path):
    from autonumad.daemon import PassReport
    d = make_daemon(tmp_path)                       # scan_sleep_pass_millisecs 10000
    d.last_pass = PassReport(actions=0)
    assert d._pass_interval_ms() == 10000           # settled
    d.last_pass = PassReport(actions=3)
    assert d._pass_interval_ms() == 2000            # acting: a fifth
    d.last_pass = PassReport(actions=3, first_votes=2)
    assert d._pass_interval_ms() == 500             # the second vote
    d.last_pass = PassReport(actions=3, windows_open=1, window_left_s=0.7, first_votes=2)
    assert d._pass_interval_ms() == 700             # until the window is due (window_s from its arming)
    d.last_pass = PassReport(actions=3, windows_open=1, window_left_s=0.0, first_votes=2)
    assert d._pass_interval_ms() == 100             # overdue: a short pause all the same


def test_a_misplacement_nothing_can_be_done_about_is_looked_at_less_and_less_often(tmp_path):
    from autonumad.daemon import PassReport
    d = make_daemon(tmp_path)
    d.published["managed_processes"] = [{"locality": 0.5}]      # bigger than one node, say
    d.last_pass = PassReport(actions=2)
    assert d._pass_interval_ms() == 2000
    d.last_pass = PassReport(actions=0)
    assert [d._pass_interval_ms() for _ in range(7)] == [2000, 4000, 8000, 16000, 32000, 60000, 60000]
    d.last_pass = PassReport(actions=1)
    assert d._pass_interval_ms() == 2000                        # something moved: short again


def test_a_process_spread_over_nodes_at_its_locality_bound_lets_passes_back_off_as_settled(tmp_path):
    from autonumad.daemon import PassReport
    d = make_daemon(tmp_path)
    d.published["managed_processes"] = [{"locality": 0.48, "locality_bound": 0.5}]   # numa01 over two nodes
    d.last_pass = PassReport(actions=0)
    assert [d._pass_interval_ms() for _ in range(4)] == [10000, 20000, 40000, 60000]
    d.published["managed_processes"] = [{"locality": 0.3, "locality_bound": 0.5}]    # below it: misplaced
    d.last_pass = PassReport(actions=2)
    d._pass_interval_ms()
    d.last_pass = PassReport(actions=0)
    assert [d._pass_interval_ms() for _ in range(2)] == [2000, 4000]


def test_movers_run_at_mover_nice_then_go_back_and_move_anyway_without_the_privilege(tmp_path, monkeypatch):
    from autonumad import daemon as daemon_module
    from autonumad.kernel import sched
    monkeypatch.setattr(sched, "set_affinity", lambda tid, cpus: (_ for _ in ()).throw(PermissionError(1, "no")))
    nice = {}                                    # per thread, starting at 0
    seen = []

    def set_nice(value):
        if value < 0 and refuse:
            raise PermissionError(13, "Permission denied")
        nice[threading.get_native_id()] = value

    monkeypatch.setattr(sched, "own_nice", lambda: nice.get(threading.get_native_id(), 0))
    monkeypatch.setattr(sched, "set_own_nice", set_nice)
    for refuse in (False, True):
        d = make_daemon(tmp_path / str(refuse))
        ops = FakeOps()
        real = ops.move_ranges

        def move_ranges(*args):
            seen.append((refuse, nice.get(threading.get_native_id(), 0)))
            return real(*args)

        ops.move_ranges = move_ranges
        d.actuator.ops = ops
        d.groups = {(10, 77): {1: GroupRange(REGION, 2 * REGION, 1), 2: GroupRange(2 * REGION, 3 * REGION, 0)}}
        lines = d.apply(Plan((migration(1, 1, 0), migration(2, 0, 1)), d.policy_state))
        assert all(line.endswith("[done, 512 pages moved]") for line in lines)
    # one call or more per mover (as the rate limit's tokens come): all at MOVER_NICE, then at 0
    assert {n for refused, n in seen if not refused} == {daemon_module.MOVER_NICE}
    assert {n for refused, n in seen if refused} == {0}
    assert nice[threading.get_native_id()] == 0  # the main thread moved one run: back at its nice


def test_movers_run_on_the_cpus_of_the_node_they_move_pages_to_then_on_their_own(tmp_path, monkeypatch):
    from autonumad import daemon as daemon_module
    from autonumad.kernel import sched
    affinity = {}                                # per thread, starting with all four CPUs
    seen = []
    nice, nices = {}, []
    monkeypatch.setattr(sched, "own_nice", lambda: nice.get(threading.get_native_id(), 0))
    monkeypatch.setattr(sched, "set_own_nice", lambda value: nice.__setitem__(threading.get_native_id(), value))

    def set_affinity(tid, cpus):
        assert tid == 0
        if refuse:
            raise PermissionError(1, "Operation not permitted")
        affinity[threading.get_native_id()] = frozenset(cpus)

    monkeypatch.setattr(sched, "get_affinity", lambda tid: affinity.get(threading.get_native_id(),
                                                                         frozenset({0, 1, 2, 3})))
    monkeypatch.setattr(sched, "set_affinity", set_affinity)
    for refuse in (False, True):
        d = make_daemon(tmp_path / str(refuse))
        ops = FakeOps()
        real = ops.move_ranges

        def move_ranges(pid, ranges, from_node, to_node, limit, resume):
            seen.append((refuse, to_node, sched.get_affinity(0)))
            nices.append((refuse, sched.own_nice()))
            return real(pid, ranges, from_node, to_node, limit, resume)

        ops.move_ranges = move_ranges
        d.actuator.ops = ops
        d.groups = {(10, 77): {1: GroupRange(REGION, 2 * REGION, 1), 2: GroupRange(2 * REGION, 3 * REGION, 0)}}
        lines = d.apply(Plan((migration(1, 1, 0), migration(2, 0, 1)), d.policy_state))
        assert all(line.endswith("[done, 512 pages moved]") for line in lines)
    cpus = {n: frozenset(d.topology.nodes[n].cpus) for n in (0, 1)}
    assert {(to, cpus_now) for refused, to, cpus_now in seen if not refused} == {(0, cpus[0]), (1, cpus[1])}
    assert {nice for refused, nice in nices if not refused} == {0}    # on the node: the daemon's own nice
    assert {nice for refused, nice in nices if refused} == {daemon_module.MOVER_NICE}   # elsewhere: higher
    assert {cpus_now for refused, _, cpus_now in seen if refused} == {frozenset({0, 1, 2, 3})}  # moved anyway
    assert affinity[threading.get_native_id()] == frozenset({0, 1, 2, 3})  # the main thread's are back
    # a daemon allowed only node 0's CPUs (taskset, a cpuset): its mover for node 0 is there already
    from autonumad.daemon import _mover_on
    affinity[threading.get_native_id()] = cpus[0]
    refuse = False
    with _mover_on(cpus[0]) as on_node:
        assert on_node and sched.get_affinity(0) == cpus[0]
    with _mover_on(cpus[1]) as on_node:
        assert not on_node and sched.get_affinity(0) == cpus[0]


def test_once_settled_passes_come_twice_as_far_apart_up_to_the_max_and_windows_with_them(tmp_path):
    from autonumad.daemon import REARM_AFTER_S, PassReport
    d = make_daemon(tmp_path)                                   # 10 s, up to 60 s
    d.published["managed_processes"] = [{"locality": 1.0}]
    d.last_pass = PassReport(actions=2)
    assert d._pass_interval_ms() == 2000
    d.last_pass = PassReport(actions=0)
    assert [d._pass_interval_ms() for _ in range(5)] == [10000, 20000, 40000, 60000, 60000]
    assert d.sampler.rearm_after_s == 120.0                     # a pair of windows every two pauses
    d.last_pass = PassReport(windows_open=1, window_left_s=0.5)  # such a pair: no change
    assert d._pass_interval_ms() == 500 and d.sampler.rearm_after_s == 120.0
    d.last_pass = PassReport(actions=0)
    assert d._pass_interval_ms() == 60000
    d.last_pass = PassReport(new_processes=1)                   # something new: short again
    assert d._pass_interval_ms() == 2000 and d.sampler.rearm_after_s == REARM_AFTER_S
    d.last_pass = PassReport(actions=0)
    assert d._pass_interval_ms() == 10000
    d.config = replace(d.config, scan=replace(d.config.scan, scan_sleep_pass_max_millisecs=5000))
    assert d._pass_interval_ms() == 10000                       # never below the base


def test_quiet_processes_are_those_nothing_was_voted_planned_or_done_for():
    from types import SimpleNamespace
    from autonumad.daemon import Daemon
    from autonumad.plan import ExchangeTasks, MoveTask, PolicyState
    from autonumad.processes import ProcessKey
    views = [SimpleNamespace(pid=pid, start_time=77, growing=pid == 15) for pid in range(10, 17)]
    move = lambda pid: MoveTask(pid, 77, pid, "app", 0, 1, "")
    state = PolicyState(group_target={(11, 77, 3): 0}, group_agreed={(12, 77, 4): 1})
    plan = Plan((migration(5, pid=13), move(14), ExchangeTasks((move(16), move(10)), "")), state)
    assert Daemon._quiet_after(SimpleNamespace(processes=views), plan) == set()   # 15 grows
    assert Daemon._quiet_after(SimpleNamespace(processes=views), Plan((), PolicyState())) == {
        ProcessKey(pid, 77) for pid in (10, 11, 12, 13, 14, 16)}


def test_processes_the_plan_spread_over_nodes_are_those_its_done_moves_put_on_several():
    from types import SimpleNamespace
    from autonumad.daemon import Daemon
    from autonumad.plan import ExchangeTasks, MoveTask, PolicyState
    from autonumad.policy import ProcessView, TaskView
    from autonumad.processes import ProcessKey
    two_on_0 = ProcessView(10, 77, "app", {0: 100}, (TaskView(10, 0, 0.0), TaskView(11, 0, 1.0), TaskView(12, 0, 1.0)))
    spread = ProcessView(20, 77, "app", {0: 100}, (TaskView(21, 0, 1.0), TaskView(22, 1, 1.0)))
    alone = ProcessView(30, 77, "app", {0: 100}, (TaskView(31, 0, 1.0),))
    move = lambda pid, tid, a, b: MoveTask(pid, 77, tid, "app", a, b, "")
    snapshot = SimpleNamespace(processes=(two_on_0, spread, alone))
    plan = Plan((ExchangeTasks((move(10, 12, 0, 1), move(30, 31, 0, 0)), ""), move(20, 22, 1, 0),
                 move(10, 10, 0, 2)), PolicyState())   # 10's main thread is idle: it does not count
    assert Daemon._spread_by(snapshot, plan, ["done", "done", "done"], 0.2) == [ProcessKey(10, 77)]
    assert Daemon._spread_by(snapshot, plan, ["failed: gone", "done", "done"], 0.2) == []


def test_memory_policies_are_read_once_votes_agree_then_the_pass_plans_again(tmp_path):
    from types import SimpleNamespace
    from autonumad.processes import ProcessKey
    from test_policy import machine, migrations, plan, process, thread
    from autonumad.policy import PageGroup, PolicyConfig, Snapshot
    d = make_daemon(tmp_path)
    unread = process(811, [thread(811, 1, user_pinned=True)], {0: 1000}, [PageGroup(1, 0, 1000)],
                     mempolicy_known=False)
    second = plan(machine(), unread, state=plan(machine(), unread).state, time=1001.0)
    assert migrations(second) == [] and second.state.group_agreed == {(811, 5811, 1): 1}
    read = []

    class Mm:
        own = 0.0

        def want_policies(self, key):
            read.append(key)

        def observe(self, info, budget, local_nodes=()):
            return SimpleNamespace(policies_read=True, self_placed_share=lambda: Mm.own)

    d.mm = Mm()
    infos = {ProcessKey(811, 5811): SimpleNamespace(key=ProcessKey(811, 5811))}
    snapshot = Snapshot(1001.0, machine(), (unread,))
    d.policy_state = plan(machine(), unread).state
    again_snapshot, again = d._plan_with_policies(snapshot, second, PolicyConfig(), infos)
    assert read == [ProcessKey(811, 5811)] and again_snapshot.processes[0].mempolicy_known
    assert [(m.group_id, m.to_node) for m in migrations(again)] == [(1, 1)]
    Mm.own = 1.0                            # it bound its memory itself: it stays
    assert d._plan_with_policies(snapshot, second, PolicyConfig(), infos)[1].actions == ()
    # nothing agreed, or its policies known already: no read, the same plan
    read.clear()
    first = plan(machine(), unread)
    assert d._plan_with_policies(snapshot, first, PolicyConfig(), infos) == (snapshot, first) and read == []
