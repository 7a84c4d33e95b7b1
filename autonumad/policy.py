"""Policy: from one snapshot of the machine to a plan of actions, each with its reason.

This is the `policy` box of the data flow: pure functions, no I/O and no clock.
`plan_pass(snapshot, state, config)` takes what the statistics saw (`Snapshot`: the
nodes, and per process its per-node pages, its threads and its sampled page
groups), the `PolicyState` the previous pass returned, and a `PolicyConfig`; it
returns a `Plan` (autonumad.plan): thread moves and page migrations, each with a
reason a person can read, and the state for the next pass. Everything is iterated
in sorted order, so the same input always gives the same plan.

CPU follows memory
------------------
A thread's weight on a node is AutoNUMA's: 1000 x the share of its memory on that
node. "Its memory" is its process's per-node pages, or the thread's own per-node
access counts when those differ from its process's by at least
`thread_stats_difference` (total variation distance) and two write-fault windows saw
it write (OWN_STATS_WINDOWS), as for a numa02 thread that sweeps only its own slice. A small nearness term (at most 100, from the SLIT
distances) is added so that, among places of equal weight, the one nearer the
memory wins; alone it never pays for a move.

Placement is solved as a whole each pass. Every runnable thread (runnable_weight
>= runnable_threshold) that may move is given a node; each node has one slot per
CPU; the total of the threads' weights, less `move_cost` for each thread not left
where it runs, is maximised. Threads that may not move (pinned by someone else,
or moved within settle_seconds) keep their slots, and so do the busy CPUs of
threads the daemon does not manage (NodeView.other_busy_cpus). Slots beyond a node's CPUs exist
but cost more than any weight can repay, and more for each further thread per CPU:
so no node runs more runnable threads than CPUs while another node has an idle
one, and an overcommitted machine spreads its excess evenly.

The solver is cycle cancelling on a small graph whose vertices are the nodes plus
one "free CPU" vertex. An edge A->B carries the best thread to send from A to B;
edges to and from the free vertex stand for a node gaining or giving up a thread.
Starting from where threads run now, Bellman-Ford finds a cycle that raises the
total -- a swap A->B->A, a rotation A->B->C->A, or a chain into an idle CPU (free
->A->B->free) -- and applies it, until none is left. No improving cycle left is
the optimality condition of min-cost flow, so the result is an optimal
assignment; starting from the current placement, ties leave threads where they
are. With a handful of nodes a round costs little even for hundreds of threads.

The difference between the optimum and the present is split back into
independent pieces (swaps, rotations, chains); pieces that gain less than
`min_gain` are dropped, the rest are taken best first up to `max_moves_per_pass`
thread moves (a single piece larger than the whole budget goes alone). A piece of
one move is a `MoveTask`; a longer one is one `ExchangeTasks`. A thread that moved
for its own gain is settled for settle_seconds; one that only made room for
another may move again next pass.

Processes bigger than one node (more runnable threads, not counting pinned ones,
than any node has CPUs not held by pinned threads) are given their nodes first,
biggest first. From every node as a seed, grow a set by nearest distance until its
free CPUs hold the threads; keep the smallest set, then the one with the least
total distance between its members, then the one holding most of the process's
memory (with a bonus of `min_gain` per mille for the set that already holds all
its threads, against flapping on noise). The process's threads earn a bonus on
those nodes that outweighs any memory weight, so they gather there; other threads
fill the rest. The choice ignores settling, so it holds still while threads settle
and unsettle (the property test found a swap back and forth when it did not). The
sets are chosen before the assignment, not jointly with it: a spanning process
may displace a smaller process from its memory node, whose memory then follows.
Such a process's threads that are where they should be (on a node of its set, not
crowded) but free to leave (not `held`) are held there (a `MoveTask` to the node
they run on): otherwise the kernel's scheduler moves them about and stacks two on
one CPU.

Memory follows CPU
------------------
Only for processes that did not set their own memory policy, and none of whose
threads are about to move this pass (moving the thread is cheaper than moving its
pages, so that is tried first). Pinned processes' memory follows their threads.
- A process whose runnable threads all run on node A wants every page group on
  another node moved to A, unless REMNANT_LOCALITY of its movable memory (its page
  groups) is there already.
- A process whose threads run on several nodes wants each group moved to the node
  whose threads touched it most (per-thread fault samples, mapped through each
  thread's current node, each thread's touches counted as their share of all its
  touches: the same measure threads are placed by, so the two never chase each
  other), by at least `min_gain` per mille of the touches more than the node
  holding it, and, when its samples come from several nodes, by more than their
  noise (a lead of two standard deviations, 2/sqrt(samples)), so a group both
  nodes write alike stays where it is. Not when its threads share its memory
  (SHARED_MEMORY_SHARE of it written from several nodes), nor when the runnable threads
  of one of its nodes were seen writing next to nothing (SILENT_NODE_SHARE: they may be
  reading it, or writing behind a leader the first-write sampling alone shows): then
  only groups on nodes none of its threads run on move, and those only while they are
  more than a remnant (SPREAD_REMNANT_LOCALITY). Groups no thread was seen touching stay put,
  unless they sit on a node none of the process's threads run on: remote to every one
  of them, they go to the nearest node its threads run on (ties: the one with most of
  them), behind the groups whose writers were seen.
A group is queued only when this pass wants the same node as the previous pass
(AutoNUMA's last_nid filter; any other wish in between starts over), largest gains
(pages x per-mille gain) first, within `pages_to_migrate` pages per pass (the
daemon sets it to what its migration rate limit grants until the next pass; a single
group larger than the whole budget goes alone). A node never receives pages that
would bring its free memory below its reserve (the larger of node_reserve_mb and
node_reserve_percent of its size); the group then spills to the node nearest the
wanted one that has room, but only if that is nearer the wanted node than where
the group sits now, else it stays. A queued group is not migrated again within
settle_seconds, so never straight back. When memory is queued to follow threads
that run on one node but are free to leave it (not `held`: no pin keeps them
there, as when the kernel reset the pins of threads whose CPUs went offline),
those threads are held there first (a `MoveTask` to the node they run on), so
that the kernel's scheduler does not take them elsewhere while their memory comes.

Together these converge: every piece of thread moves raises the solver's total by
at least min_gain, and memory only moves towards the threads that use it, so
feeding the plan's outcome back as the next snapshot reaches a plan with no
actions (tests/unit/test_policy_convergence.py checks this on random machines).
"""

from __future__ import annotations

import math

from collections import Counter, defaultdict, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from autonumad.nodelist import format_list
from autonumad.plan import (SCAN_VOTE, Action, ExchangeTasks, GroupKey, MigratePages, MoveTask, Plan,
                            PolicyState, TaskKey, task_moves)

WEIGHT_FULL = 1000
"""AutoNUMA's weight of a thread on the node holding all of its memory."""

NEARNESS_FULL = 100
"""The most the nearness tie-break adds (all memory local); remote memory adds less the farther it is."""

OWN_STATS_WINDOWS = 2
"""A thread's own access counts stand for its memory once this many write-fault windows saw
it write. One window shows only which thread wrote each page first: two threads sweeping
one buffer half a buffer apart split it cleanly between them, each "owning" the half it
reached first, and where that buffer spans two nodes the split reads as a reason to swap
them; the next window, begun at another point of the sweep, splits it elsewhere and the
counts mix (AutoNUMA's two scans agree, for threads)."""

_FREE = -1
"""The solver's extra vertex, standing for CPUs taken and given up (node ids are >= 0)."""

ProcessKey = tuple[int, int]
"""(pid, start time)."""


# ------------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class NodeView:
    """One NUMA node. A node without CPUs holds memory only."""

    id: int
    cpus: tuple[int, ...]
    free_mb: float
    total_mb: float
    distances: Mapping[int, int]
    """SLIT distance from this node to every node, itself included."""
    other_busy_cpus: int = 0
    """CPUs kept busy by threads the snapshot does not show (processes not managed):
    they count against the node's CPUs like pinned threads, so nothing is stacked on them."""


@dataclass(frozen=True)
class TaskView:
    """One thread."""

    tid: int
    cpu_node: int
    """The node it runs on now (or ran on most since the last pass)."""
    runnable_weight: float
    """Share of one CPU it used recently, 0..1."""
    access_pages: Mapping[int, int] = field(default_factory=dict)
    """Its own decayed per-node access counts (write-fault samples); empty when not sampled."""
    user_pinned: bool = False
    """Its affinity or cpuset was narrowed by someone else: never moved."""
    allowed_nodes: frozenset[int] | None = None
    """Nodes its cpuset allows; None for any."""
    held: bool = True
    """Its affinity keeps it on the node it runs on (a pin of the daemon's or of its user's);
    False when the kernel may move it to another node (as after its CPUs went offline)."""
    access_windows: int = OWN_STATS_WINDOWS
    """How many write-fault windows saw it write (its own counts weigh from OWN_STATS_WINDOWS)."""


@dataclass(frozen=True)
class PageGroup:
    """Sampled pages of one process that the actuator can move together (by address)."""

    id: int
    node: int
    """The node the pages are on now."""
    pages: int
    """Pages the actuator would move."""
    touches: Mapping[int, int] = field(default_factory=dict)
    """tid -> decayed count of that thread's sampled touches of these pages."""
    window: int | None = None
    """For a group seen through sampled writes, the last sampling window that saw it
    written: a move needs the votes of two passes that saw it in different windows (None:
    the group's figures are the scan's, new at every pass)."""


@dataclass(frozen=True)
class ProcessView:
    """One process (one mm)."""

    pid: int
    start_time: int
    comm: str
    node_pages: Mapping[int, int]
    """Decayed per-node counts of its resident pages."""
    tasks: tuple[TaskView, ...]
    page_groups: tuple[PageGroup, ...] = ()
    own_mempolicy: bool = False
    """It set a bind/interleave/preferred policy itself: its memory is never migrated."""
    growing: bool = False
    """Its resident memory grew markedly since the last pass: it is still being first-touched
    (a job setting up, maybe by short-lived threads under policies of their own that its
    numa_maps does not show), so where it lands is the process's doing. Its pages get no
    votes (and lose those cast) until it holds steady; its threads may still move."""
    mempolicy_known: bool = True
    """Its memory policies were read. Until they are, its page groups vote, and votes that
    agree stand, but none of them moves (the daemon then reads the policies and plans again)."""
    user_pinned: bool = False
    """Someone else pinned the whole process: none of its threads is moved."""
    touch_locality: float | None = None
    """Share of its sampled memory on the node of the threads writing it (None: not
    sampled). For a process spread over nodes the truer locality: half its pages on each
    node is perfect when each thread writes its own half."""
    own_pages: Mapping[int, int] = field(default_factory=dict)
    """Per node, its pages migration may move: private anonymous memory, less what it still
    shares with another process (its parent's since fork, on the node its parent ran on).
    Empty: not known (node_pages stands in)."""


@dataclass(frozen=True)
class Snapshot:
    """What the statistics saw at `time` (seconds, any monotonic origin)."""

    time: float
    nodes: tuple[NodeView, ...]
    processes: tuple[ProcessView, ...]


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's knobs; the daemon fills them from its configuration."""

    settle_seconds: float = 10.0
    node_reserve_mb: float = 256.0
    node_reserve_percent: float = 0.0
    cpu_follows_memory: bool = True
    memory_follows_cpu: bool = True
    move_cost: int = 50
    """Weight a thread must gain to be worth moving at all (0..1000 scale)."""
    min_gain: int = 100
    """Smallest gain (0..1000 scale) for which a swap, rotation, chain or page group moves."""
    max_moves_per_pass: int = 16
    pages_to_migrate: int = 32768
    """Pages queued for migration per pass (the daemon: the rate limit's grant until the next pass)."""
    page_size: int = 4096
    runnable_threshold: float = 0.2
    """Threads using less of a CPU than this neither take a slot nor move."""
    thread_stats_difference: float = 0.3
    """How far (total variation) a thread's own access shares must be from its process's to be used."""


# ------------------------------------------------------------------------------ the pass

def plan_pass(snapshot: Snapshot, state: PolicyState, config: PolicyConfig) -> Plan:
    """One pass of the policy: CPU follows memory first, then memory follows CPU."""
    settled = {key for key, at in state.task_moved_at.items() if snapshot.time - at < config.settle_seconds}
    placement = _plan_placement(snapshot, settled, config) if config.cpu_follows_memory else _Placement()
    migrations = (_plan_migrations(snapshot, state, config, placement.moving) if config.memory_follows_cpu
                  else _Migrations())

    live_tasks = {_task_key(p, t) for p in snapshot.processes for t in p.tasks}
    live_groups = {_group_key(p, g) for p in snapshot.processes for g in p.page_groups}

    def recent(times: Mapping, live: set) -> dict:
        return {k: at for k, at in times.items() if k in live and snapshot.time - at < config.settle_seconds}

    return Plan(
        actions=placement.actions + migrations.actions,
        state=PolicyState(
            task_moved_at=recent(state.task_moved_at, live_tasks) | placement.settled,
            group_target=migrations.targets,
            group_window=migrations.windows,
            group_agreed=migrations.agreed,
            group_migrated_at=recent(state.group_migrated_at, live_groups) | migrations.queued,
        ),
        shared_memory=migrations.shared,
    )


def _process_key(process: ProcessView) -> ProcessKey:
    return (process.pid, process.start_time)


def _task_key(process: ProcessView, task: TaskView) -> TaskKey:
    return (process.pid, process.start_time, task.tid)


def _group_key(process: ProcessView, group: PageGroup) -> GroupKey:
    return (process.pid, process.start_time, group.id)


def _distance(nodes: Mapping[int, NodeView], a: int, b: int) -> int:
    return nodes[a].distances[b]


def _percent(share: float) -> int:
    return round(100 * share)


# ------------------------------------------------------------------------------ CPU follows memory

@dataclass(frozen=True)
class _Mover:
    """A runnable thread the solver may place, with what each allowed node is worth to it."""

    process: ProcessView
    task: TaskView
    shares: Mapping[int, float]
    own_stats: bool
    weight: Mapping[int, int]
    """AutoNUMA weight per allowed node (for reasons)."""
    base: Mapping[int, int]
    """Weight + nearness + span bonus per allowed node."""
    value: Mapping[int, int]
    """base, less move_cost away from where it runs: what the solver maximises."""

    @property
    def key(self) -> TaskKey:
        return _task_key(self.process, self.task)


@dataclass(frozen=True)
class _Piece:
    """An independent part of the new placement: moves (mover index, from, to) in order,
    the node that ends with one thread less (`frees`) and one more (`fills`), if any."""

    moves: tuple[tuple[int, int, int], ...]
    frees: int | None
    fills: int | None


@dataclass(frozen=True)
class _Placement:
    actions: tuple[Action, ...] = ()
    moving: frozenset[ProcessKey] = frozenset()
    """Processes with threads that move this pass or want to (deferred by max_moves_per_pass)."""
    settled: Mapping[TaskKey, float] = field(default_factory=dict)


def _plan_placement(snapshot: Snapshot, settled: set[TaskKey], config: PolicyConfig) -> _Placement:
    nodes = {n.id: n for n in snapshot.nodes}
    cpus = {n.id: len(n.cpus) for n in snapshot.nodes if n.cpus}
    pinned_load: Counter[int] = Counter()
    fixed_load: Counter[int] = Counter()
    unpinned: list[tuple[ProcessView, TaskView]] = []
    for n in snapshot.nodes:
        if n.id in cpus and n.other_busy_cpus > 0:
            pinned_load[n.id] += n.other_busy_cpus
            fixed_load[n.id] += n.other_busy_cpus
    for process in sorted(snapshot.processes, key=_process_key):
        for task in sorted(process.tasks, key=lambda t: t.tid):
            if task.runnable_weight < config.runnable_threshold or task.cpu_node not in cpus:
                continue
            if process.user_pinned or task.user_pinned:
                pinned_load[task.cpu_node] += 1
                fixed_load[task.cpu_node] += 1
            elif _task_key(process, task) in settled:
                fixed_load[task.cpu_node] += 1
                unpinned.append((process, task))
            else:
                unpinned.append((process, task))

    spans = _choose_spans(unpinned, pinned_load, cpus, nodes, config)
    movers = [_make_mover(p, t, spans.get(_process_key(p)), cpus, nodes, config) for p, t in unpinned
              if _task_key(p, t) not in settled]
    solver = _Solver(movers, fixed_load, cpus, config)
    load_now = solver.load([m.task.cpu_node for m in movers])
    ranked = sorted(((solver.gain(piece, load_now), piece) for piece in solver.pieces(solver.optimise())),
                    key=lambda gp: (-gp[0], movers[gp[1].moves[0][0]].key))
    worth = [piece for gain, piece in ranked if gain >= config.min_gain]

    actions: list[Action] = []
    settled_now: dict[TaskKey, float] = {}
    load = Counter(load_now)
    budget = config.max_moves_per_pass
    for piece in worth:
        too_big = len(piece.moves) > budget and budget < config.max_moves_per_pass
        if too_big or solver.gain(piece, load) < config.min_gain:
            continue
        budget = max(0, budget - len(piece.moves))
        actions.append(_piece_action(piece, movers, spans, cpus, load_now))
        if piece.frees is not None:
            load[piece.frees] -= 1
            load[piece.fills] += 1
        for i, a, b in piece.moves:
            if movers[i].base[b] > movers[i].base[a]:
                settled_now[movers[i].key] = snapshot.time
    moving = frozenset(_process_key(movers[i].process) for piece in worth for i, _, _ in piece.moves)
    actions += _place_holds(unpinned, spans, actions, load, cpus, budget)
    return _Placement(tuple(actions), moving, settled_now)


HOME_HOLD_SHARE = 0.9
"""A busy thread free to leave a node that holds this share of its process's memory is held
there (its process fitting on one node, the node not crowded)."""


def _hold(process: ProcessView, task: TaskView, why: str) -> MoveTask:
    """A move to the node it runs on: its affinity narrowed to that node's CPUs."""
    return MoveTask(process.pid, process.start_time, task.tid, process.comm, task.cpu_node, task.cpu_node,
                    f"holds it on node {task.cpu_node}, {why}, before the kernel's scheduler takes it elsewhere")


def _place_holds(unpinned: list[tuple[ProcessView, TaskView]], spans: Mapping[ProcessKey, frozenset[int]],
                 actions: list[Action], load: Mapping[int, int], cpus: Mapping[int, int],
                 budget: int) -> list[MoveTask]:
    """Moves to the node they run on for threads that are where they should be (on a node of
    their process's span, or on the node with nearly all of its memory; not crowded) but free
    to leave it: the kernel's scheduler would otherwise stack them on a sibling's CPU, or take
    them away from their memory, as it does when another task wakes on their CPU."""
    moved = {(m.pid, m.start_time, m.tid) for a in actions for m in task_moves(a)}
    holds = []
    for process, task in unpinned:
        if task.held or load[task.cpu_node] > cpus[task.cpu_node] \
                or (process.pid, process.start_time, task.tid) in moved:
            continue
        span = spans.get(_process_key(process))
        if span:
            if task.cpu_node in span:
                holds.append(_hold(process, task, f"one of the nodes its process spans ({format_list(span)})"))
        elif _shares(process.node_pages).get(task.cpu_node, 0.0) >= HOME_HOLD_SHARE:
            holds.append(_hold(process, task, f"where {_percent(_shares(process.node_pages)[task.cpu_node])}% "
                                              f"of its memory is"))
    return holds[:budget]  # what max_moves_per_pass leaves


def _memory_shares(process: ProcessView, task: TaskView,
                   config: PolicyConfig) -> tuple[dict[int, float], bool]:
    """The per-node shares that define the thread's weights, and whether they are its own."""
    process_shares = _shares(process.node_pages)
    own = _shares(task.access_pages)
    if own and task.access_windows >= OWN_STATS_WINDOWS:
        nodes = own.keys() | process_shares.keys()
        difference = sum(abs(own.get(n, 0.0) - process_shares.get(n, 0.0)) for n in nodes) / 2
        # threads that write the same memory: what a window saw each of them write first is no
        # preference of its own (whether they share it does not depend on where they run)
        if difference >= config.thread_stats_difference \
                and _shared_share(process, {t.tid: t.tid for t in process.tasks}) < SHARED_MEMORY_SHARE:
            return own, True
    return process_shares, False


def _shares(counts: Mapping[int, int]) -> dict[int, float]:
    total = sum(c for c in counts.values() if c > 0)
    return {n: c / total for n, c in sorted(counts.items()) if c > 0} if total else {}


def _span_bonus(config: PolicyConfig) -> int:
    """Outweighs any difference of weight, nearness and move cost between two nodes."""
    return WEIGHT_FULL + NEARNESS_FULL + config.move_cost + 1


def _make_mover(process: ProcessView, task: TaskView, span: frozenset[int] | None, cpus: Mapping[int, int],
                nodes: Mapping[int, NodeView], config: PolicyConfig) -> _Mover:
    shares, own_stats = _memory_shares(process, task, config)
    allowed = {n for n in cpus if task.allowed_nodes is None or n in task.allowed_nodes} | {task.cpu_node}
    weight, base, value = {}, {}, {}
    for n in sorted(allowed):
        weight[n] = round(WEIGHT_FULL * shares.get(n, 0.0))
        nearness = sum(share * _distance(nodes, n, n) / _distance(nodes, n, m)
                       for m, share in shares.items() if m in nodes)
        bonus = _span_bonus(config) if span and n in span else 0
        base[n] = weight[n] + round(NEARNESS_FULL * nearness) + bonus
        value[n] = base[n] - (config.move_cost if n != task.cpu_node else 0)
    return _Mover(process, task, shares, own_stats, weight, base, value)


def _choose_spans(unpinned: list[tuple[ProcessView, TaskView]], pinned_load: Mapping[int, int],
                  cpus: Mapping[int, int], nodes: Mapping[int, NodeView],
                  config: PolicyConfig) -> dict[ProcessKey, frozenset[int]]:
    """Nodes for each process whose runnable threads (settled or not, but not pinned) fit on no single node.

    Settled threads count as the process's own and their slots as free, so that the
    choice does not change when they settle and unsettle.
    """
    room = {n: max(0, c - pinned_load[n]) for n, c in cpus.items()}
    threads: dict[ProcessKey, list[TaskView]] = defaultdict(list)
    processes: dict[ProcessKey, ProcessView] = {}
    for process, task in unpinned:
        threads[_process_key(process)].append(task)
        processes[_process_key(process)] = process
    order = sorted(threads, key=lambda k: (-len(threads[k]), -sum(processes[k].node_pages.values()), k))
    spans: dict[ProcessKey, frozenset[int]] = {}
    for key in order:
        need = len(threads[key])
        if need < 2 or max(room.values(), default=0) >= need:
            continue
        running = {t.cpu_node for t in threads[key]}
        shares = _shares(processes[key].node_pages)
        best: tuple | None = None
        for seed in sorted(n for n in room if room[n] > 0):
            members = _grow_span(seed, need, room, nodes)
            if members is None:
                continue
            memory = round(WEIGHT_FULL * sum(shares.get(n, 0.0) for n in members))
            memory += config.min_gain if running <= set(members) else 0
            spread = sum(_distance(nodes, a, b) for a in members for b in members if a < b)
            rank = (len(members), spread, -memory, sorted(members))
            if best is None or rank < best[0]:
                best = (rank, members)
        if best is None:
            continue
        left = need
        for n in best[1]:
            take = min(room[n], left)
            room[n] -= take
            left -= take
        spans[key] = frozenset(best[1])
    return spans


def _grow_span(seed: int, need: int, room: Mapping[int, int],
               nodes: Mapping[int, NodeView]) -> list[int] | None:
    members, have = [seed], room[seed]
    others = (n for n in room if n != seed and room[n] > 0)
    for n in sorted(others, key=lambda n: (_distance(nodes, seed, n), n)):
        if have >= need:
            break
        members.append(n)
        have += room[n]
    return members if have >= need else None


class _Solver:
    """Optimal assignment of movers to node slots by cycle cancelling (see the module docstring)."""

    def __init__(self, movers: list[_Mover], fixed_load: Mapping[int, int], cpus: Mapping[int, int],
                 config: PolicyConfig) -> None:
        self.movers = movers
        self.fixed_load = fixed_load
        self.cpus = cpus
        self.overload_step = 2 * _span_bonus(config)

    def load(self, positions: list[int]) -> Counter[int]:
        load = Counter(self.fixed_load)
        load.update(positions)
        return load

    def slot_cost(self, node: int, nth: int) -> int:
        """What running an `nth` runnable thread on `node` costs: nothing while it has a CPU free."""
        extra = nth - self.cpus[node]
        return 0 if extra <= 0 else self.overload_step * -(-extra // self.cpus[node])

    def optimise(self) -> list[int]:
        positions = [m.task.cpu_node for m in self.movers]
        while (cycle := self._improving_cycle(positions)) is not None:
            for i, to in cycle:
                positions[i] = to
        return positions

    def _improving_cycle(self, positions: list[int]) -> list[tuple[int, int]] | None:
        best: dict[tuple[int, int], tuple[int, int]] = {}
        for i, mover in enumerate(self.movers):
            here = positions[i]
            for there, value in mover.value.items():
                gain = value - mover.value[here]
                if there != here and ((here, there) not in best or gain > best[here, there][0]):
                    best[here, there] = (gain, i)
        load = self.load(positions)
        edges = [(a, b, -gain, i) for (a, b), (gain, i) in sorted(best.items())]
        edges += [(n, _FREE, self.slot_cost(n, load[n] + 1), None) for n in sorted(self.cpus)]
        edges += [(_FREE, n, -self.slot_cost(n, load[n]), None) for n in sorted(self.cpus) if load[n] > 0]
        cycle = _negative_cycle([_FREE, *sorted(self.cpus)], edges)
        return None if cycle is None else [(i, b) for a, b, cost, i in cycle if i is not None]

    def gain(self, piece: _Piece, load: Mapping[int, int]) -> int:
        """What applying `piece` alone to a placement with `load` adds to the total."""
        gain = sum(self.movers[i].value[b] - self.movers[i].value[a] for i, a, b in piece.moves)
        if piece.frees is not None:
            gain += self.slot_cost(piece.frees, load[piece.frees])
            gain -= self.slot_cost(piece.fills, load[piece.fills] + 1)
        return gain

    def pieces(self, positions: list[int]) -> list[_Piece]:
        """Split the moves from the present to `positions` into independent swaps, rotations and chains."""
        out: dict[int, deque[tuple[int, int, int | None]]] = defaultdict(deque)
        net: Counter[int] = Counter()
        for i, mover in enumerate(self.movers):
            a, b = mover.task.cpu_node, positions[i]
            if a != b:
                out[a].append((a, b, i))
                net[b] += 1
                net[a] -= 1
        for n in sorted(net):
            for _ in range(max(0, net[n])):
                out[n].append((n, _FREE, None))
            for _ in range(max(0, -net[n])):
                out[_FREE].append((_FREE, n, None))
        pieces = []
        for start in sorted(out):
            while out[start]:
                vertices, edges = [start], []
                while True:
                    edge = out[vertices[-1]].popleft()
                    edges.append(edge)
                    if edge[1] not in vertices:
                        vertices.append(edge[1])
                        continue
                    closed = vertices.index(edge[1])
                    pieces.append(_piece_from_cycle(edges[closed:]))
                    del edges[closed:]
                    del vertices[closed + 1:]
                    if not edges:
                        break
        return pieces


def _negative_cycle(vertices: list[int], edges: list[tuple]) -> list[tuple] | None:
    """A cycle of negative total cost (edges in order), or None: Bellman-Ford from every vertex at once."""
    dist = dict.fromkeys(vertices, 0)
    via: dict[int, tuple] = {}
    changed = None
    for _ in vertices:
        changed = None
        for edge in edges:
            a, b, cost = edge[:3]
            if dist[a] + cost < dist[b]:
                dist[b] = dist[a] + cost
                via[b] = edge
                changed = b
        if changed is None:
            return None
    on_cycle = changed
    for _ in vertices:
        on_cycle = via[on_cycle][0]
    cycle, vertex = [], on_cycle
    while True:
        cycle.append(via[vertex])
        vertex = via[vertex][0]
        if vertex == on_cycle:
            return cycle[::-1]


def _piece_from_cycle(edges: list[tuple[int, int, int | None]]) -> _Piece:
    """A closed walk of the difference graph as a piece; a chain is rotated to start where a CPU frees up."""
    frees = next((b for a, b, i in edges if a == _FREE), None)
    if frees is not None:
        start = next(k for k, (a, b, i) in enumerate(edges) if a == _FREE)
        edges = edges[start:] + edges[:start]
    fills = next((a for a, b, i in edges if b == _FREE), None)
    return _Piece(tuple((i, a, b) for a, b, i in edges if i is not None), frees, fills)


def _piece_action(piece: _Piece, movers: list[_Mover], spans: Mapping[ProcessKey, frozenset[int]],
                  cpus: Mapping[int, int], load: Mapping[int, int]) -> Action:
    moves = []
    for k, (i, a, b) in enumerate(piece.moves):
        mover = movers[i]
        displaced_by = movers[piece.moves[k - 1][0]] if k > 0 or piece.frees is None else None
        reason = _move_reason(mover, a, b, spans.get(_process_key(mover.process)), cpus, load, displaced_by)
        if b == piece.fills and load[b] < cpus[b]:
            reason += f"; node {b} has an idle CPU"
        moves.append(MoveTask(mover.process.pid, mover.process.start_time, mover.task.tid, mover.process.comm,
                              a, b, reason))
    if len(moves) == 1:
        return moves[0]
    before = sum(movers[i].weight[a] for i, a, b in piece.moves)
    after = sum(movers[i].weight[b] for i, a, b in piece.moves)
    if piece.frees is not None:
        kind = f"chain of {len(moves)} moves into node {piece.fills}"
    elif len(moves) == 2:
        kind = "swap of " + " and ".join(f"pid {m.pid} tid {m.tid}" for m in moves)
    else:
        kind = f"rotation of {len(moves)} threads"
    if after > before:
        return ExchangeTasks(tuple(moves), f"{kind} raises total weight {before} -> {after}")
    driver = next((m.reason for m in moves if not m.reason.startswith("makes room")), moves[0].reason)
    return ExchangeTasks(tuple(moves), f"{kind}: {driver}")


def _move_reason(mover: _Mover, a: int, b: int, span: frozenset[int] | None, cpus: Mapping[int, int],
                 load: Mapping[int, int], displaced_by: _Mover | None) -> str:
    if mover.weight[b] > mover.weight[a]:
        what = "of its own accesses are" if mover.own_stats else "of its memory is"
        return (f"{_percent(mover.shares.get(b, 0.0))}% {what} on node {b}, "
                f"{_percent(mover.shares.get(a, 0.0))}% on node {a}")
    if span and b in span and a not in span:
        return f"its process spans nodes {format_list(span)}, the fewest and nearest that hold its threads"
    if load[a] > cpus[a]:
        return f"node {a} has {load[a]} runnable threads on {cpus[a]} CPUs"
    if displaced_by is not None:
        return f"makes room for pid {displaced_by.process.pid} tid {displaced_by.task.tid}"
    return f"node {b} is nearer its memory"


# ------------------------------------------------------------------------------ memory follows CPU

@dataclass(frozen=True)
class _Migrations:
    actions: tuple[Action, ...] = ()
    targets: Mapping[GroupKey, int] = field(default_factory=dict)
    """Where each group wanted to go this pass (the next pass's last_nid)."""
    windows: Mapping[GroupKey, int] = field(default_factory=dict)
    """The sampling window each of those wishes was made from."""
    agreed: Mapping[GroupKey, int] = field(default_factory=dict)
    """Groups whose two votes agreed but that were not queued (migration budget, no room)."""
    queued: Mapping[GroupKey, float] = field(default_factory=dict)
    shared: frozenset[ProcessKey] = frozenset()
    """Processes spread over nodes whose threads share their memory (Plan.shared_memory)."""


@dataclass(frozen=True)
class _Wish:
    gain: float
    key: GroupKey
    process: ProcessView
    group: PageGroup
    target: int
    why: str


def _plan_migrations(snapshot: Snapshot, state: PolicyState, config: PolicyConfig,
                     moving: frozenset[ProcessKey]) -> _Migrations:
    nodes = {n.id: n for n in snapshot.nodes}
    targets: dict[GroupKey, int] = {}
    windows: dict[GroupKey, int] = {}
    wishes: list[_Wish] = []
    agreed: dict[GroupKey, int] = {}
    sharing: set[ProcessKey] = set()
    for process in sorted(snapshot.processes, key=_process_key):
        if process.own_mempolicy or process.growing or _process_key(process) in moving:
            continue
        runs_on = {t.cpu_node for t in process.tasks if t.runnable_weight >= config.runnable_threshold
                   and t.cpu_node in nodes}
        if not runs_on:
            continue
        # the writers that count: threads that run (an idle main thread's few writes, each
        # weighing much as a share of its own few, would pull groups to where it sleeps)
        thread_node = {t.tid: t.cpu_node for t in process.tasks
                       if t.runnable_weight >= config.runnable_threshold and t.cpu_node in nodes}
        thread_touches: dict[int, int] = {}  # each thread's sampled touches of all of its process's groups
        for g in process.page_groups:  # (plain dicts and loops: a few hundred groups each pass)
            for tid, c in g.touches.items():
                if c > 0:
                    thread_touches[tid] = thread_touches.get(tid, 0) + c
        writers = ({g.id: _writers_by_node(g, thread_node) for g in process.page_groups}
                   if len(runs_on) > 1 else {})
        shared = len(runs_on) > 1 and (_shared_share(process, thread_node, writers) >= SHARED_MEMORY_SHARE
                                       or _silent_node(thread_node, thread_touches) is not None)
        if shared:
            sharing.add(_process_key(process))
        with_threads = _movable_share(process, runs_on)
        if len(runs_on) == 1 and with_threads >= REMNANT_LOCALITY:
            continue  # what is left elsewhere is mostly what cannot move, or sampling noise
        # (groups seen through sampled writes are 2 MiB regions, each counted at its size: a
        # region of the interpreter's heap holding a few dozen pages counts as many as one of a
        # buffer's, so where all of its own memory is, the scan's count, says it too)
        remnant_elsewhere = with_threads >= SPREAD_REMNANT_LOCALITY or (
            len(runs_on) > 1 and any(g.window is not None for g in process.page_groups)
            and sum(_shares(process.own_pages or process.node_pages).get(n, 0.0) for n in runs_on)
            >= SPREAD_REMNANT_LOCALITY)
        for group in sorted(process.page_groups, key=lambda g: g.id):
            if group.node in runs_on and (shared or len(runs_on) > 1 and _written_from_several(writers[group.id])):
                # its threads write the same memory (the process's, or this group): it stays with
                # whichever of them it is with (a soft-dirty window sees each page's first writer
                # only, so which of them leads a group they share is chance: the interpreter's
                # pages of a job of two threads, say)
                continue
            if remnant_elsewhere and group.node not in runs_on:
                continue
            key = _group_key(process, group)
            migrated_at = state.group_migrated_at.get(key)
            if migrated_at is not None and snapshot.time - migrated_at < config.settle_seconds:
                continue
            wish = _group_wish(group, runs_on, thread_node, thread_touches, nodes, config)
            if wish is None:
                continue
            target, gain, why = wish
            targets[key] = target
            # a wish from sampled writes needs a second window's; one from where the threads
            # run (or from the scan's figures) a second pass's
            source = group.window if group.window is not None and len(runs_on) > 1 else SCAN_VOTE
            windows[key] = source
            before = state.group_window.get(key)
            if state.group_target.get(key) == target and (state.group_agreed.get(key) == target or (
                    before is not None and (before == source == SCAN_VOTE
                                            or SCAN_VOTE not in (before, source) and before != source))):
                if process.mempolicy_known:
                    wishes.append(_Wish(gain, key, process, group, target, why))
                else:
                    agreed[key] = target   # stands until its policies are known

    actions: list[MigratePages] = []
    queued: dict[GroupKey, float] = {}
    incoming_mb: Counter[int] = Counter()
    budget = config.pages_to_migrate
    for wish in sorted(wishes, key=lambda w: (-w.gain, w.key)):
        group = wish.group
        if group.pages > budget and budget < config.pages_to_migrate:
            agreed[wish.key] = wish.target   # its votes stand for the next pass
            continue
        mb = group.pages * config.page_size / 2**20
        to, spill = _destination(wish.target, group.node, mb, nodes, incoming_mb, config)
        if to is None:
            agreed[wish.key] = wish.target
            continue
        budget = max(0, budget - group.pages)
        incoming_mb[to] += mb
        queued[wish.key] = snapshot.time
        actions.append(MigratePages(wish.process.pid, wish.process.start_time, wish.process.comm, group.id,
                                    group.node, to, group.pages, f"{wish.why}; two passes agree{spill}"))
    holds = _holds(snapshot.processes, {(a.pid, a.start_time) for a in actions}, nodes, config)
    return _Migrations(tuple(holds) + tuple(actions), targets, windows, agreed, queued, frozenset(sharing))


def _holds(processes: tuple[ProcessView, ...], migrating: set[ProcessKey], nodes: Mapping[int, NodeView],
           config: PolicyConfig) -> list[MoveTask]:
    """Moves to the node they run on for the runnable threads, not held there, of processes
    whose memory is queued to come to that node (the one node all their runnable threads run on)."""
    holds = []
    for process in sorted(processes, key=_process_key):
        if _process_key(process) not in migrating or process.user_pinned:
            continue
        runnable = [t for t in process.tasks if t.runnable_weight >= config.runnable_threshold
                    and t.cpu_node in nodes]
        if len({t.cpu_node for t in runnable}) != 1:
            continue
        for t in sorted(runnable, key=lambda t: t.tid):
            if not t.held and not t.user_pinned:
                holds.append(_hold(process, t, "where its memory is being moved"))
    return holds


SHARED_MEMORY_SHARE = 0.25
"""A process whose threads on different nodes were seen writing the same regions, for this
share of its sampled memory or more, shares its memory among them (numa01 threads all
sweeping one buffer): its memory is not split by writer (only what sits on a node none of
its threads run on moves, to them). A window sees only each page's first writer, so a region
two sweepers share shows one of them in each window; over the windows a process's regions
add up, and the shared ones show as shared."""



SILENT_NODE_SHARE = 0.1
"""A process whose runnable threads on some node made less than this share of its sampled
writes is not split by writer either: those threads are busy, and may well be using the
same memory, unseen. A soft-dirty window shows only each page's first writer, so of two
threads sweeping one buffer close behind each other only the leader is seen, window after
window (the follower writes pages already dirty); and reads are not seen at all (a thread
reading what another writes). Moving the memory to the writer's node would gain nothing
for the first pair, cost the second, and follow the lead back and forth as it changes
hands. Memory on nodes none of its threads run on still comes to them."""


def _silent_node(thread_node: Mapping[int, int], thread_touches: Mapping[int, int]) -> int | None:
    """A node whose runnable threads (`thread_node`) made less than SILENT_NODE_SHARE of
    the process's sampled writes (`thread_touches`), or None when each node wrote its share.
    With no sampled writes at all, None (no writer to split by)."""
    by_node: Counter[int] = Counter({n: 0 for n in thread_node.values()})
    for tid, count in thread_touches.items():
        if tid in thread_node:
            by_node[thread_node[tid]] += count
    total = sum(by_node.values())
    if not total:
        return None
    quiet = [n for n, c in sorted(by_node.items()) if c < SILENT_NODE_SHARE * total]
    return quiet[0] if quiet else None


SHARED_WRITER_SHARE = 0.3
"""A group counts as shared when threads on nodes other than its main writer's made at
least this share of its sampled writes."""


def _writers_by_node(group: PageGroup, thread_node: Mapping[int, int]) -> dict[int, int]:
    """The group's sampled writes per node of the writer (`thread_node`; others not counted)."""
    by_node: dict[int, int] = {}
    for tid, count in group.touches.items():  # plain dicts and loops: a few hundred groups each pass
        node = thread_node.get(tid)
        if node is not None and count > 0:
            by_node[node] = by_node.get(node, 0) + count
    return by_node


def _written_from_several(by_node: Mapping[int, int]) -> bool:
    """Whether writes per node (`_writers_by_node`) make a shared group (SHARED_WRITER_SHARE)."""
    if len(by_node) < 2:
        return False
    writes = sum(by_node.values())
    return writes - max(by_node.values()) >= SHARED_WRITER_SHARE * writes


def _shared_share(process: ProcessView, thread_node: Mapping[int, int],
                  writers: Mapping[int, Mapping[int, int]] | None = None) -> float:
    """Share of the process's sampled pages in groups written from more than one node (each
    thread counting as the node `thread_node` gives it; `writers`: each group's
    _writers_by_node by group id, when already counted)."""
    shared = total = 0
    for group in process.page_groups:
        by_node = writers[group.id] if writers is not None else _writers_by_node(group, thread_node)
        if by_node:
            total += group.pages
            if _written_from_several(by_node):
                shared += group.pages
    return shared / total if total else 0.0


SAMPLE_NOISE_SIGMAS = 2.0
"""A group whose samples come from threads on several nodes must lead the node holding it by
this many standard deviations of the sampling noise (a lead of 1/sqrt(samples) is one for a
group written from two nodes alike): otherwise two nodes that write a group equally would
pass it back and forth. A group written from one node only (a numa02 slice) needs no more."""


def _movable_share(process: ProcessView, nodes: Collection[int]) -> float:
    """Share of the process's movable memory (its page groups) on `nodes`; of all its memory
    when it has no groups. Libraries and other file pages it shares with every process, on
    whichever node first read them, would otherwise keep a small process's share below
    REMNANT_LOCALITY for good, its sampled strays voted on and moved pass after pass."""
    total = sum(g.pages for g in process.page_groups)
    if not total:
        shares = _shares(process.node_pages)
        return sum(shares.get(n, 0.0) for n in nodes)
    return sum(g.pages for g in process.page_groups if g.node in nodes) / total


REMNANT_LOCALITY = 0.98
"""A process whose runnable threads all run on one node, with this share of its movable
memory (its page groups) there, has the rest left alone: mostly pages that cannot move (shared with its parent since
fork, pinned) and sampled estimates of a few pages each, which would cost a vote pass and a
move of nothing, again and again (AutoNUMA's memory follows CPU; numad also stops at a
process that is local enough)."""


SPREAD_REMNANT_LOCALITY = 0.95
"""A process with this share of its movable memory on the nodes its runnable threads run
on has the rest (on nodes none of them runs on) left alone. Meant for processes spread over
several nodes, it holds for those on one node too, below REMNANT_LOCALITY (which, above it,
spares a process on one node even its votes): what its
threads write there is mostly interpreter and allocator pages first touched wherever a
thread ran before it was placed, much of it shared with the parent since fork; each
write-fault window finds a few more such regions, so moving them would go on pass after
pass for next to nothing. (Its memory on its threads' nodes is still split by writer.)
Where its groups are the 2 MiB regions its writes were sampled in, each counted at a
region's size however few pages it holds, this share of its own memory by the scan on
those nodes will do as well (ProcessView.own_pages: not the pages it still shares with its
parent since fork, which no migration moves, a few MB of a Python job's)."""


UNSEEN_GROUP_WEIGHT = 0.5
"""A group no thread was seen writing, on a node none of its process's threads run on, moves
to the nearest node they run on (it is remote to every one of them): its gain counts half,
behind groups whose writers were seen."""


def _group_wish(group: PageGroup, runs_on: set[int], thread_node: Mapping[int, int],
                thread_touches: Mapping[int, int], nodes: Mapping[int, NodeView],
                config: PolicyConfig) -> tuple[int, float, str] | None:
    """(target node, gain, why) for a group that should move, or None.

    With threads on several nodes, each thread's touches of the group count as the share
    they are of all its touches: the measure CPU follows memory places threads by (a
    thread's weight on a node is the share of its accesses there). Raw counts would let
    a thread that touches a group most, but is mostly elsewhere, pull it away from a
    thread that uses nothing else, which the placement then swaps onto the group's new
    node: the two would chase each other for ever."""
    if len(runs_on) == 1:
        (node,) = runs_on
        if group.node == node:
            return None
        return node, group.pages * WEIGHT_FULL, f"its threads run on node {node}"
    touches: defaultdict[int, float] = defaultdict(float)
    for tid, count in sorted(group.touches.items()):
        if tid in thread_node and count > 0:
            touches[thread_node[tid]] += count / thread_touches[tid]
    total = sum(touches.values())
    if not total:
        if group.node in runs_on:
            return None  # no thread seen touching it: it stays with the threads it is with
        threads = Counter(thread_node.values())
        target = min(runs_on, key=lambda n: (_distance(nodes, group.node, n), -threads[n], n))
        return (target, group.pages * WEIGHT_FULL * UNSEEN_GROUP_WEIGHT,
                f"none of its process's threads runs on node {group.node}; node {target} is the "
                f"nearest they run on")
    top = max(touches.values())
    if touches[group.node] == top:
        return None
    most = (n for n, c in touches.items() if c == top)
    target = min(most, key=lambda n: (_distance(nodes, group.node, n), n))
    gain = WEIGHT_FULL * (top - touches[group.node]) / total
    if gain < config.min_gain:
        return None
    samples = sum(c for tid, c in group.touches.items() if tid in thread_node and c > 0)
    mixed = sum(1 for c in touches.values() if c > 0) > 1
    if mixed and (top - touches[group.node]) / total < SAMPLE_NOISE_SIGMAS / math.sqrt(samples):
        return None  # within the noise of that few samples: a group written from both nodes alike
    why = f"{_percent(top / total)}% of its weighted sampled touches are from threads on node {target}"
    return target, group.pages * gain, why


def _destination(target: int, here: int, mb: float, nodes: Mapping[int, NodeView],
                 incoming_mb: Mapping[int, float], config: PolicyConfig) -> tuple[int | None, str]:
    """Where the pages go (the target, or the nearest node to it with room), with a note when spilled."""
    def reserve(n: int) -> float:
        return max(config.node_reserve_mb, nodes[n].total_mb * config.node_reserve_percent / 100)

    def has_room(n: int) -> bool:
        return nodes[n].free_mb - incoming_mb[n] - mb >= reserve(n)

    if has_room(target):
        return target, ""
    nearer = [n for n in nodes if n not in (target, here)
              and _distance(nodes, target, n) < _distance(nodes, target, here) and has_room(n)]
    if not nearer:
        return None, ""
    to = min(nearer, key=lambda n: (_distance(nodes, target, n), n))
    return to, (f"; node {target} would fall below its {reserve(target):.0f} MB free reserve, "
                 f"node {to} is the nearest with room")
