"""The policy converges: applying its plans to a simulated machine reaches a placement
where it plans nothing, within a few passes, without ever returning to an earlier one."""

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from autonumad.plan import ExchangeTasks, MigratePages, MoveTask, PolicyState
from autonumad.policy import NodeView, PageGroup, PolicyConfig, ProcessView, Snapshot, TaskView, plan_pass

PAGE_SIZE = 4096
CONFIG = PolicyConfig(settle_seconds=10, node_reserve_mb=16, page_size=PAGE_SIZE, pages_to_migrate=16384)
PASS_SECONDS = 5  # so that a thread moved on one pass is still settled on the next
PASSES = 30
QUIET_BY = 15  # the last action comes before this pass


@dataclass
class Thread:
    tid: int
    node: int
    runnable: float
    pinned: bool
    allowed: frozenset[int] | None = None


@dataclass
class Group:
    id: int
    node: int
    pages: int
    touches: dict[int, int]


@dataclass
class Process:
    pid: int
    threads: list[Thread]
    groups: list[Group]
    own_mempolicy: bool


@dataclass
class Machine:
    cpus: list[int]
    total_mb: list[float]
    distances: list[list[int]]
    processes: list[Process] = field(default_factory=list)

    def snapshot(self, time: float) -> Snapshot:
        used_mb = Counter()
        for p in self.processes:
            for g in p.groups:
                used_mb[g.node] += g.pages * PAGE_SIZE / 2**20
        first_cpu = [sum(self.cpus[:n]) for n in range(len(self.cpus))]
        nodes = tuple(NodeView(n, tuple(range(first_cpu[n], first_cpu[n] + c)), self.total_mb[n] - used_mb[n],
                               self.total_mb[n], dict(enumerate(self.distances[n])))
                      for n, c in enumerate(self.cpus))
        return Snapshot(time, nodes, tuple(self.view(p) for p in self.processes))

    @staticmethod
    def view(p: Process) -> ProcessView:
        pages = Counter()
        for g in p.groups:
            pages[g.node] += g.pages

        def access(tid):
            counts = Counter()
            for g in p.groups:
                counts[g.node] += g.touches.get(tid, 0)
            return {n: c for n, c in counts.items() if c}

        tasks = tuple(TaskView(t.tid, t.node, t.runnable, access(t.tid), t.pinned, t.allowed) for t in p.threads)
        groups = tuple(PageGroup(g.id, g.node, g.pages, g.touches) for g in p.groups)
        return ProcessView(p.pid, 1, f"p{p.pid}", pages, tasks, groups, p.own_mempolicy)

    def apply(self, actions) -> None:
        threads = {t.tid: t for p in self.processes for t in p.threads}
        groups = {(p.pid, g.id): g for p in self.processes for g in p.groups}
        for action in actions:
            for move in action.moves if isinstance(action, ExchangeTasks) else [action]:
                if isinstance(move, MoveTask):
                    assert threads[move.tid].node == move.from_node and not threads[move.tid].pinned
                    threads[move.tid].node = move.to_node
                elif isinstance(move, MigratePages):
                    assert groups[move.pid, move.group_id].node == move.from_node
                    groups[move.pid, move.group_id].node = move.to_node

    def placement(self) -> tuple:
        return tuple((t.tid, t.node) for p in self.processes for t in p.threads) + tuple(
            (p.pid, g.id, g.node) for p in self.processes for g in p.groups)


@st.composite
def machines(draw):
    count = draw(st.integers(2, 4))
    cpus = draw(st.lists(st.integers(0, 2), min_size=count, max_size=count).filter(any))
    distances = [[10] * count for _ in range(count)]
    for a in range(count):
        for b in range(a + 1, count):
            distances[a][b] = distances[b][a] = draw(st.sampled_from([12, 15, 20, 25, 30]))
    m = Machine(cpus, [draw(st.sampled_from([48.0, 128.0, 512.0])) for _ in range(count)], distances)
    cpu_nodes = [n for n in range(count) if cpus[n]]
    tid = 100
    for pid in range(1, draw(st.integers(1, 5)) + 1):
        threads = []
        for _ in range(draw(st.integers(1, 4))):
            tid += 1
            node = draw(st.sampled_from(cpu_nodes))
            allowed = draw(st.none() | st.sets(st.sampled_from(cpu_nodes)).map(lambda s, n=node: frozenset(s | {n})))
            threads.append(Thread(tid, node, draw(st.sampled_from([0.0, 0.5, 1.0])),
                                  draw(st.sampled_from([False, False, False, True])), allowed))
        tids = [t.tid for t in threads]
        groups = [Group(g, draw(st.integers(0, count - 1)), draw(st.integers(1, 8192)),
                        draw(st.dictionaries(st.sampled_from(tids), st.integers(0, 50))))
                  for g in range(draw(st.integers(0, 4)))]
        m.processes.append(Process(pid, threads, groups, draw(st.sampled_from([False, False, False, True]))))
    return m


def run(machine: Machine, config: PolicyConfig = CONFIG) -> list[tuple]:
    """Plan and apply PASSES passes; the actions of each. Fails on a return to an earlier placement."""
    state, seen, passes = PolicyState(), {machine.placement()}, []
    for k in range(PASSES):
        plan = plan_pass(machine.snapshot(k * PASS_SECONDS), state, config)
        machine.apply(plan.actions)
        state = plan.state
        passes.append(plan.actions)
        if plan.actions:
            assert machine.placement() not in seen, f"pass {k} returned to an earlier placement: {plan.describe()}"
            seen.add(machine.placement())
    assert not any(passes[QUIET_BY:]), [len(actions) for actions in passes]
    return passes


def migrated_pages(passes: list[tuple]) -> int:
    return sum(a.pages for actions in passes for a in actions if isinstance(a, MigratePages))


# Found by hypothesis: a process's set of nodes must not change as its threads settle and unsettle.
SETTLING_SPANS = Machine([2, 0, 1, 1], [48.0] * 4, [[10, 12, 12, 12], [12, 10, 12, 12], [12, 12, 10, 12],
                                                    [12, 12, 12, 10]], [
    Process(1, [Thread(101, 0, 0.0, False), Thread(102, 0, 0.5, False), Thread(103, 0, 0.5, False)],
            [Group(0, 0, 1, {}), Group(1, 0, 1, {}), Group(2, 2, 2, {})], False),
    Process(2, [Thread(104, 0, 0.5, False), Thread(105, 0, 0.0, False), Thread(106, 0, 0.5, False)],
            [Group(0, 1, 1, {104: 0, 105: 1})], False)])


@settings(max_examples=300, deadline=None)
@given(machines())
@example(SETTLING_SPANS)
def test_applying_plans_converges_to_an_empty_plan_without_oscillating(machine):
    run(machine)


PAIRS = [[10, 15, 25, 25], [15, 10, 25, 25], [25, 25, 10, 15], [25, 25, 15, 10]]


def numa01(node_count: int, processes: list[tuple[tuple[int, ...], int]], distances=None) -> Machine:
    """Processes given as (nodes their threads start on, node holding all their memory); 1-CPU, 1 GiB
    nodes; every thread sweeps all of its process's memory (8 groups of 100 MB)."""
    distances = distances or [[10 if a == b else 20 for b in range(node_count)] for a in range(node_count)]
    m = Machine([1] * node_count, [1024.0] * node_count, distances)
    for pid, (thread_nodes, memory_node) in enumerate(processes, 1):
        tids = [100 * pid + k for k in range(len(thread_nodes))]
        m.processes.append(Process(pid, [Thread(t, n, 1.0, False) for t, n in zip(tids, thread_nodes)],
                                   [Group(g, memory_node, 100 * 256, dict.fromkeys(tids, 10)) for g in range(4)],
                                   False))
    return m


def locality(m: Machine) -> float:
    local = total = 0
    for p in m.processes:
        for t in p.threads:
            for g in p.groups:
                total += g.pages
                local += g.pages if g.node == t.node else 0
    return local / total


@pytest.mark.parametrize("name, machine", [
    ("S1: two processes on each other's memory", numa01(2, [((0,), 1), ((1,), 0)])),
    ("S3: the same on four nodes", numa01(4, [((0,), 3), ((3,), 0)])),
    ("S4: a rotation of four", numa01(4, [((0,), 1), ((1,), 2), ((2,), 3), ((3,), 0)])),
])
def test_numa01_starts_reach_full_locality_by_moving_threads_alone(name, machine):
    passes = run(machine)
    assert locality(machine) == 1.0
    assert migrated_pages(passes) == 0
    assert sum(len(actions) for actions in passes) == 1, "one swap or rotation"


def test_numa01_with_both_processes_on_one_node_moves_one_process_and_its_memory():
    m = numa01(2, [((0,), 0), ((0,), 0)])
    passes = run(m)
    assert locality(m) == 1.0
    assert migrated_pages(passes) == 4 * 100 * 256, "one process's memory, once"


def test_numa02_pinned_threads_keep_their_cpus_and_their_slices_come_to_them():
    # S2: one process, a thread pinned to each node, each thread's slice first touched on the other node.
    m = Machine([1, 1], [1024.0] * 2, [[10, 20], [20, 10]], [
        Process(1, [Thread(11, 0, 1.0, True), Thread(12, 1, 1.0, True)],
                [Group(g, 1 - g % 2, 64 * 256, {11 + g % 2: 10}) for g in range(4)], False)])
    passes = run(m)
    assert [t.node for t in m.processes[0].threads] == [0, 1]
    assert all(g.node == g.id % 2 for g in m.processes[0].groups)
    assert migrated_pages(passes) == 4 * 64 * 256


def test_numa01_processes_bigger_than_a_node_end_one_pair_each():
    # S5: 2 processes x 2 threads on 4 one-CPU nodes in near pairs, all memory first touched on node 0.
    m = numa01(4, [((0, 2), 0), ((1, 3), 0)], PAIRS)
    run(m)
    for p in m.processes:
        threads = {t.node for t in p.threads}
        assert threads in ({0, 1}, {2, 3})
        assert {g.node for g in p.groups} <= threads, "no pages on a node where none of its threads run"
