"""The policy's rules, one hand-written snapshot each (see autonumad/policy.py)."""

import random
from dataclasses import replace

from autonumad.plan import SCAN_VOTE, ExchangeTasks, MigratePages, MoveTask, PolicyState
from autonumad.policy import (NodeView, PageGroup, PolicyConfig, ProcessView, Snapshot, TaskView,
                              _silent_node, plan_pass)

NOW = 1000.0

# 4 nodes in two near pairs: 10 within a node, 15 for 0-1 and 2-3, 25 otherwise (the S5 machine).
PAIRS = [[10, 15, 25, 25], [15, 10, 25, 25], [25, 25, 10, 15], [25, 25, 15, 10]]


def machine(count=2, cpus=1, free_mb=1000.0, total_mb=1024.0, distances=None, **free_by_node):
    """`count` nodes with `cpus` CPUs each; distances 10/20 unless a matrix is given."""
    def distance(a, b):
        return distances[a][b] if distances else (10 if a == b else 20)

    return tuple(
        NodeView(n, tuple(range(n * cpus, (n + 1) * cpus)), free_by_node.get(f"free{n}", free_mb), total_mb,
                 {m: distance(n, m) for m in range(count)})
        for n in range(count))


def thread(tid, node, runnable=1.0, **kw):
    return TaskView(tid, node, runnable, **kw)


def process(pid, threads, pages, groups=(), comm="app", **kw):
    return ProcessView(pid, 5000 + pid, comm, pages, tuple(threads), tuple(groups), **kw)


def plan(nodes, *processes, state=PolicyState(), time=NOW, **config):
    return plan_pass(Snapshot(time, nodes, processes), state, PolicyConfig(**config))


def moves(p):
    """{tid: (from, to)} of every thread move in a plan."""
    out = {}
    for action in p.actions:
        for move in action.moves if isinstance(action, ExchangeTasks) else [action]:
            if isinstance(move, MoveTask):
                out[move.tid] = (move.from_node, move.to_node)
    return out


def migrations(p):
    return [a for a in p.actions if isinstance(a, MigratePages)]


def two_passes(nodes, *processes, **config):
    """The second of two passes over the same snapshot (the last_nid filter needs two)."""
    first = plan(nodes, *processes, **config)
    return first, plan(nodes, *processes, state=first.state, time=NOW + 1, **config)


# ------------------------------------------------------------------------------ CPU follows memory

def test_cpu_follows_memory_swaps_two_processes():
    a = process(811, [thread(811, 0)], {1: 1000}, [PageGroup(1, 1, 1000)])
    b = process(812, [thread(812, 1)], {0: 1000}, [PageGroup(1, 0, 1000)])
    first, second = two_passes(machine(), a, b)
    assert len(first.actions) == 1 and isinstance(first.actions[0], ExchangeTasks)
    assert moves(first) == {811: (0, 1), 812: (1, 0)}
    assert first.actions[0].reason == "swap of pid 811 tid 811 and pid 812 tid 812 raises total weight 0 -> 2000"
    assert first.state.group_target == {}
    assert migrations(second) == []


def test_cpu_follows_memory_rotates_four_processes():
    procs = [process(100 + n, [thread(100 + n, n)], {(n + 1) % 4: 1000}) for n in range(4)]
    p = plan(machine(4), *procs)
    assert len(p.actions) == 1
    assert moves(p) == {100: (0, 1), 101: (1, 2), 102: (2, 3), 103: (3, 0)}
    assert p.actions[0].reason == "rotation of 4 threads raises total weight 0 -> 4000"


def test_thread_moves_to_its_memory_node_when_that_node_has_an_idle_cpu():
    p = plan(machine(), process(811, [thread(811, 0)], {0: 28, 1: 72}))
    assert p.actions == (MoveTask(811, 5811, 811, "app", 0, 1,
                                  "72% of its memory is on node 1, 28% on node 0; node 1 has an idle CPU"),)
    assert p.state.task_moved_at == {(811, 5811, 811): NOW}


def test_small_gain_is_no_move():
    assert plan(machine(), process(811, [thread(811, 0)], {0: 45, 1: 55})).actions == ()


def test_equal_weights_leave_threads_where_they_run():
    a = process(811, [thread(811, 0)], {0: 500, 1: 500})
    b = process(812, [thread(812, 1)], {0: 500, 1: 500})
    assert plan(machine(), a, b).actions == ()


def test_a_cpu_kept_busy_by_an_unmanaged_thread_is_not_an_idle_cpu():
    # process 812 runs on node 0 but is not managed (not in the snapshot) yet: 811 must
    # not be stacked on it; once 812 is managed, the two swap
    nodes = machine()
    busy = (replace(nodes[0], other_busy_cpus=1), nodes[1])
    a = process(811, [thread(811, 1)], {0: 1000})
    assert plan(busy, a).actions == ()
    assert moves(plan(nodes, a)) == {811: (1, 0)}
    b = process(812, [thread(812, 0)], {1: 1000})
    assert moves(plan(nodes, a, b)) == {811: (1, 0), 812: (0, 1)}


def test_never_more_runnable_threads_on_a_node_than_cpus_while_another_idles():
    a = process(811, [thread(811, 0)], {0: 1000})
    b = process(812, [thread(812, 0)], {0: 1000})
    p = plan(machine(), a, b)
    assert moves(p) == {811: (0, 1)}
    assert p.actions[0].reason == "node 0 has 2 runnable threads on 1 CPUs; node 1 has an idle CPU"
    assert p.state.task_moved_at == {}, "a thread moved only to make room is not settled"


def test_overcommitted_machine_spreads_its_extra_threads_evenly():
    procs = [process(800 + k, [thread(800 + k, 0)], {0: 1000}) for k in range(4)]
    p = plan(machine(), *procs)
    assert sorted(moves(p).values()) == [(0, 1), (0, 1)]


def test_threads_under_the_runnable_threshold_neither_move_nor_take_a_cpu():
    sleeper = process(811, [thread(811, 1, runnable=0.05)], {0: 1000})
    worker = process(812, [thread(812, 0)], {1: 1000})
    assert moves(plan(machine(), sleeper, worker)) == {812: (0, 1)}


def test_a_thread_displaced_from_its_memory_node_goes_to_the_nearest_node():
    a = process(811, [thread(811, 0, user_pinned=True)], {0: 1000})
    b = process(812, [thread(812, 0)], {0: 1000})
    p = plan(machine(4, distances=PAIRS), a, b)
    assert moves(p) == {812: (0, 1)}


def test_thread_statistics_override_the_process_when_they_differ():
    numa02 = process(300, [thread(301, 0, access_pages={0: 50, 1: 950}),
                           thread(302, 1, access_pages={0: 950, 1: 50})], {0: 500, 1: 500})
    p = plan(machine(), numa02)
    assert moves(p) == {301: (0, 1), 302: (1, 0)}
    assert p.actions[0].moves[0].reason == "95% of its own accesses are on node 1, 5% on node 0"


def test_thread_statistics_from_one_window_are_not_yet_used():
    # one window: each thread "owns" the half of a shared buffer it wrote first
    split = process(300, [thread(301, 0, access_pages={0: 50, 1: 950}, access_windows=1),
                          thread(302, 1, access_pages={0: 950, 1: 50}, access_windows=1)], {0: 500, 1: 500})
    assert moves(plan(machine(), split)) == {}
    again = replace(split, tasks=tuple(replace(t, access_windows=2) for t in split.tasks))   # a second agrees
    assert moves(plan(machine(), again)) == {301: (0, 1), 302: (1, 0)}


def test_thread_statistics_close_to_the_process_are_not_used():
    p = process(300, [thread(301, 0, access_pages={0: 40, 1: 60})], {0: 30, 1: 70})
    assert plan(machine(), p).actions[0].reason.startswith("70% of its memory is on node 1")


def test_a_displaced_thread_is_not_settled():
    mover = process(811, [thread(811, 0)], {1: 1000})
    indifferent = process(812, [thread(812, 1)], {0: 500, 1: 500})
    p = plan(machine(), mover, indifferent)
    assert moves(p) == {811: (0, 1), 812: (1, 0)}
    assert p.actions[0].moves[1].reason == "makes room for pid 811 tid 811"
    assert set(p.state.task_moved_at) == {(811, 5811, 811)}


def test_a_settled_thread_stays_until_settle_seconds_pass():
    state = PolicyState(task_moved_at={(811, 5811, 811): NOW - 5})
    p = process(811, [thread(811, 0)], {1: 1000})
    assert plan(machine(), p, state=state, settle_seconds=10).actions == ()
    assert moves(plan(machine(), p, state=state, time=NOW + 5, settle_seconds=10)) == {811: (0, 1)}


def test_a_pinned_thread_never_moves_but_keeps_its_cpu():
    pinned = process(811, [thread(811, 1, user_pinned=True)], {0: 1000})
    other = process(812, [thread(812, 0)], {1: 1000})
    whole_process_pinned = process(813, [thread(813, 1)], {0: 1000}, user_pinned=True)
    assert plan(machine(), pinned, other).actions == ()
    assert plan(machine(), whole_process_pinned, other).actions == ()


def test_a_thread_is_only_placed_on_nodes_its_cpuset_allows():
    p = process(811, [thread(811, 0, allowed_nodes=frozenset({0, 2}))], {1: 700, 2: 300})
    assert moves(plan(machine(3), p)) == {811: (0, 2)}


def test_process_bigger_than_one_node_spans_the_nearest_pair():
    # numa01 shape on 4 one-CPU nodes: 2 processes x 2 threads, each thread sweeps all of its process's memory.
    a = process(500, [thread(501, 0), thread(502, 2)], {0: 1000})
    b = process(600, [thread(601, 1), thread(602, 3)], {2: 1000})
    p = plan(machine(4, distances=PAIRS), a, b)
    assert moves(p) == {502: (2, 1), 601: (1, 2)}
    assert p.actions[0].moves[1].reason.startswith("its process spans nodes 0-1, the fewest and nearest")


def test_processes_bigger_than_one_node_sharing_one_memory_node_split_into_pairs():
    a = process(500, [thread(501, 0), thread(502, 2)], {0: 1000})
    b = process(600, [thread(601, 1), thread(602, 3)], {0: 1000})
    p = plan(machine(4, distances=PAIRS), a, b)
    placed = {501: 0, 502: 2, 601: 1, 602: 3} | {tid: to for tid, (_, to) in moves(p).items()}
    assert {placed[501], placed[502]} == {0, 1} and {placed[601], placed[602]} == {2, 3}


def test_a_spanning_process_once_placed_stays():
    a = process(500, [thread(501, 0), thread(502, 1)], {0: 600, 1: 400})
    b = process(600, [thread(601, 2), thread(602, 3)], {0: 500, 1: 500})
    assert plan(machine(4, distances=PAIRS), a, b).actions == ()


def test_max_moves_per_pass_takes_the_best_pieces_and_holds_the_rest_back():
    a = process(1, [thread(1, 0)], {1: 1000}, [PageGroup(1, 2, 100)])
    b = process(2, [thread(2, 1)], {0: 1000})
    c = process(3, [thread(3, 2)], {3: 600, 2: 400}, [PageGroup(1, 3, 100)])
    d = process(4, [thread(4, 3)], {2: 600, 3: 400})
    p = plan(machine(4), a, b, c, d, max_moves_per_pass=2)
    assert moves(p) == {1: (0, 1), 2: (1, 0)}
    assert p.state.group_target == {}, "the held-back swap still counts as about to move"


def test_a_rotation_bigger_than_the_whole_move_budget_goes_alone():
    procs = [process(100 + n, [thread(100 + n, n)], {(n + 1) % 4: 1000}) for n in range(4)]
    assert len(moves(plan(machine(4), *procs, max_moves_per_pass=2))) == 4


def test_switching_cpu_follows_memory_off_leaves_threads_and_moves_memory():
    p = process(811, [thread(811, 0)], {1: 1000}, [PageGroup(1, 1, 100)])
    first, second = two_passes(machine(), p, cpu_follows_memory=False)
    assert first.actions == ()
    assert [(m.from_node, m.to_node) for m in second.actions] == [(1, 0)]


def test_plan_is_the_same_whatever_order_the_snapshot_lists_things_in():
    nodes = machine(4, cpus=2, distances=PAIRS)
    procs = [process(100 + k, [thread(1000 + 10 * k + t, (k + t) % 4, access_pages={t % 4: 5})
                               for t in range(3)],
                     {(k + 1) % 4: 700, k % 4: 300}, [PageGroup(g, g % 4, 10 * g + 1) for g in range(3)])
             for k in range(5)]
    expected = plan(nodes, *procs)
    rng = random.Random(4)
    for _ in range(5):
        shuffled = [ProcessView(p.pid, p.start_time, p.comm, p.node_pages, tuple(rng.sample(p.tasks, 3)),
                                tuple(rng.sample(p.page_groups, 3))) for p in rng.sample(procs, 5)]
        assert plan(tuple(rng.sample(nodes, 4)), *shuffled) == expected


def test_describe_gives_one_line_with_pid_comm_what_from_to_and_why():
    a = process(811, [thread(811, 0)], {1: 1000}, comm="numa01")
    b = process(812, [thread(812, 1)], {0: 1000}, comm="numa01")
    assert plan(machine(), a).describe() == [
        "move pid 811 (numa01) tid 811 node 0 -> 1: 100% of its memory is on node 1, 0% on node 0; "
        "node 1 has an idle CPU"]
    assert plan(machine(), a, b).describe() == [
        "exchange pid 811 (numa01) tid 811 node 0 -> 1, pid 812 (numa01) tid 812 node 1 -> 0: "
        "swap of pid 811 tid 811 and pid 812 tid 812 raises total weight 0 -> 2000"]


# ------------------------------------------------------------------------------ memory follows CPU

def test_memory_follows_a_pinned_thread_after_two_passes():
    pinned = process(811, [thread(811, 1, user_pinned=True)], {0: 1000}, [PageGroup(7, 0, 1000)])
    first, second = two_passes(machine(), pinned)
    assert first.actions == () and first.state.group_target == {(811, 5811, 7): 1}
    assert second.actions == (MigratePages(811, 5811, "app", 7, 0, 1, 1000,
                                           "its threads run on node 1; two passes agree"),)
    assert second.state.group_migrated_at == {(811, 5811, 7): NOW + 1}


def test_sampled_memory_moves_only_when_two_windows_agree_not_one_window_twice():
    def spread(window):   # threads on nodes 0 and 1; the region on node 0 written by node 1's thread
        return process(811, [thread(811, 0), thread(812, 1)], {0: 1000},
                       [PageGroup(7, 0, 512, {812: 9}, window=window), PageGroup(8, 0, 512, {811: 9}, window=window)])
    first = plan(machine(), spread(1))
    same = plan(machine(), spread(1), state=first.state, time=NOW + 1)
    assert migrations(first) == migrations(same) == []
    assert same.state.group_window == {(811, 5811, 7): 1}
    newer = plan(machine(), spread(2), state=same.state, time=NOW + 2)
    assert [(m.group_id, m.from_node, m.to_node) for m in migrations(newer)] == [(7, 0, 1)]


def test_sampled_memory_of_threads_now_on_one_node_follows_them_after_two_passes():
    together = process(811, [thread(811, 0, user_pinned=True), thread(812, 0, user_pinned=True)], {1: 1000},
                       [PageGroup(7, 1, 512, {812: 9}, window=2)])
    first, second = two_passes(machine(), together)
    assert migrations(first) == [] and first.state.group_window == {(811, 5811, 7): SCAN_VOTE}
    assert [(m.from_node, m.to_node) for m in migrations(second)] == [(1, 0)]


def test_a_wish_from_sampled_writes_is_not_confirmed_by_one_of_another_kind():
    spread = process(811, [thread(811, 0), thread(812, 1)], {0: 1000}, [PageGroup(7, 0, 512, {812: 9}, window=1)])
    after_scan_vote = PolicyState(group_target={(811, 5811, 7): 1}, group_window={(811, 5811, 7): SCAN_VOTE})
    assert migrations(plan(machine(), spread, state=after_scan_vote)) == []


def test_sampled_groups_agreed_on_but_over_the_budget_move_at_the_next_pass_without_new_votes():
    def spread():
        return process(811, [thread(811, 0), thread(812, 1)], {0: 1000},
                       [PageGroup(7, 0, 512, {812: 9}, window=2), PageGroup(8, 0, 512, {812: 9}, window=2),
                        PageGroup(9, 0, 512, {811: 9}, window=2)])    # 811's own: it stays
    state = PolicyState(group_target={(811, 5811, 7): 1, (811, 5811, 8): 1},
                        group_window={(811, 5811, 7): 1, (811, 5811, 8): 1})
    first = plan(machine(), spread(), state=state, pages_to_migrate=512)
    assert [m.group_id for m in migrations(first)] == [7] and first.state.group_agreed == {(811, 5811, 8): 1}
    second = plan(machine(), spread(), state=first.state, time=NOW + 1, pages_to_migrate=512)
    assert [m.group_id for m in migrations(second)] == [8]       # window 2 still: the agreement stood


def test_memory_the_threads_share_is_not_split_between_their_nodes():
    def numa01(shared_groups):   # two threads sweeping one buffer: some regions seen written by both
        def writers(g):          # the others each thread's own (811's stay with it on node 0)
            return {811: 5, 812: 4} if g < shared_groups else {811 + g % 2: 9}
        groups = [PageGroup(g, 0, 512, writers(g), window=g % 2 + 1) for g in range(8)]
        return process(811, [thread(811, 0), thread(812, 1)], {0: 4096}, groups)
    state = PolicyState(group_target={(811, 5811, g): 1 for g in range(8)},
                        group_window={(811, 5811, g): 3 for g in range(8)})
    shared = plan(machine(), numa01(2), state=state)
    assert migrations(shared) == []       # a quarter shared: none moves
    assert shared.shared_memory == {(811, 5811)}   # and its locality is the scan's (Plan.shared_memory)
    split = plan(machine(), numa01(1), state=state)
    assert [m.group_id for m in migrations(split)] == [1, 3, 5, 7] and split.shared_memory == frozenset()
    # an eighth shared: the rest are each thread's own, and 812's go to it
    stray = numa01(2)
    stray = replace(stray, page_groups=stray.page_groups + (PageGroup(9, 2, 512, {811: 10, 812: 8}, window=2),),
                    node_pages={0: 4096, 1: 2048, 2: 512})
    state = replace(state, group_target={**state.group_target, (811, 5811, 9): 0},
                    group_window={**state.group_window, (811, 5811, 9): 1})
    assert [(m.group_id, m.to_node) for m in migrations(plan(machine(4), stray, state=state))] == [(9, 0)]
    # shared, but on a node none of its threads run on: it comes to them


def test_memory_is_not_split_towards_a_writer_while_the_busy_threads_of_another_node_write_next_to_nothing():
    # numa01 in lockstep: a soft-dirty window shows only the leader (812), its follower's
    # writes land on pages already dirty; or 811 reads what 812 writes. Either way 811 may
    # use this memory, and moving it to node 1 would follow the lead back and forth.
    def lead():
        groups = [PageGroup(g, 0, 512, {812: 9}, window=2) for g in range(8)]
        groups.append(PageGroup(9, 2, 512, {812: 9}, window=2))        # on a node none of its threads run on
        pinned = dict(user_pinned=True)   # as numactl --cpunodebind pins them: only memory may move
        return process(811, [thread(811, 0, **pinned), thread(812, 1, **pinned), thread(813, 1, 0.0)],
                       {0: 4096, 2: 512}, groups)
    state = PolicyState(group_target={(811, 5811, g): 1 for g in range(10)},
                        group_window={(811, 5811, g): 1 for g in range(10)})
    moved = migrations(plan(machine(4), lead(), state=state))
    assert [(m.group_id, m.to_node) for m in moved] == [(9, 1)]   # only the group no thread runs beside
    assert _silent_node({811: 0, 812: 1}, {812: 72}) == 0 and _silent_node({811: 0}, {}) is None
    assert _silent_node({811: 0, 812: 1}, {811: 8, 812: 72}) is None       # 10%: each node writes its share


def test_a_spread_process_with_a_remnant_of_its_memory_on_nodes_none_of_its_threads_run_on_leaves_it():
    def spread(stray_pages):
        pinned = dict(user_pinned=True)
        groups = [PageGroup(1, 0, 9000, {811: 9}, window=2), PageGroup(2, 1, 9000, {812: 9}, window=2),
                  PageGroup(3, 2, stray_pages, {811: 9}, window=2)]      # interpreter pages, say
        return process(811, [thread(811, 0, **pinned), thread(812, 1, **pinned)],
                       {0: 9000, 1: 9000, 2: stray_pages}, groups)
    state = PolicyState(group_target={(811, 5811, 3): 0}, group_window={(811, 5811, 3): 1})
    assert migrations(plan(machine(4), spread(300), state=state)) == []       # 3% of it: left alone
    assert [(m.group_id, m.to_node) for m in migrations(plan(machine(4), spread(2000), state=state))] == [(3, 0)]


def test_what_a_spread_process_still_shares_with_its_parent_does_not_count_against_its_remnant():
    def spread(own_pages):
        pinned = dict(user_pinned=True)
        # the 2 MiB regions its writes were sampled in: a few on its threads' nodes, and one of
        # the interpreter's heap on node 2, where its parent ran
        groups = [PageGroup(1, 0, 512, {811: 9}, window=2), PageGroup(2, 1, 512, {812: 9}, window=2),
                  PageGroup(3, 2, 512, {811: 9}, window=2)]
        return replace(process(811, [thread(811, 0, **pinned), thread(812, 1, **pinned)],
                               {0: 9000, 1: 9000, 2: 1000}, groups), own_pages=own_pages)
    state = PolicyState(group_target={(811, 5811, 3): 0}, group_window={(811, 5811, 3): 1})
    # 5% of its memory by the scan on node 2: its own, it comes to its threads
    own = {0: 9000, 1: 9000, 2: 1000}
    assert [(m.group_id, m.to_node) for m in migrations(plan(machine(4), spread(own), state=state))] == [(3, 0)]
    assert [(m.group_id, m.to_node) for m in migrations(plan(machine(4), spread({}), state=state))] == [(3, 0)]
    # most of it still its parent's since fork (which no migration moves): the rest is left alone
    assert migrations(plan(machine(4), spread({0: 9000, 1: 9000, 2: 200}), state=state)) == []


def test_a_node_whose_cpus_went_offline_gets_no_thread_and_its_memory_comes_to_the_threads():
    two = machine(2)
    memory_only = (two[0], replace(two[1], cpus=()))
    p = process(811, [thread(811, 0), thread(812, 0)], {1: 1000}, [PageGroup(7, 1, 1000)])
    first, second = two_passes(memory_only, p)
    assert moves(first) == moves(second) == {}
    assert [(m.from_node, m.to_node) for m in migrations(second)] == [(1, 0)]


def test_memory_follows_threads_free_to_leave_their_node_once_they_are_held_there():
    # node 0 is full of threads whose memory is there: the free threads on node 1 stay, their memory comes
    locals_ = [process(900 + i, [thread(900 + i, 0)], {0: 1000}) for i in range(2)]
    free = process(811, [thread(811, 1, held=False), thread(812, 1, held=False), thread(813, 1, 0.0, held=False)],
                   {0: 1000}, [PageGroup(7, 0, 1000)])
    first, second = two_passes(machine(2, cpus=2), *locals_, free)
    assert first.actions == ()
    hold = "holds it on node 1, where its memory is being moved, before the kernel's scheduler takes it elsewhere"
    assert second.actions[:2] == (MoveTask(811, 5811, 811, "app", 1, 1, hold),
                                  MoveTask(811, 5811, 812, "app", 1, 1, hold))
    assert [(m.from_node, m.to_node) for m in migrations(second)] == [(0, 1)]
    assert len(second.actions) == 3 and second.state.task_moved_at == {}


def test_threads_held_or_pinned_already_are_not_held_again():
    locals_ = [process(900 + i, [thread(900 + i, 0)], {0: 1000}) for i in range(2)]
    held = process(811, [thread(811, 1)], {0: 1000}, [PageGroup(7, 0, 1000)])
    pinned = process(812, [thread(812, 1, held=False, user_pinned=True)], {0: 1000}, [PageGroup(7, 0, 1000)])
    _, second = two_passes(machine(2, cpus=2), *locals_, held, pinned)
    assert [(m.pid, m.to_node) for m in migrations(second)] == [(811, 1), (812, 1)]
    assert moves(second) == {}


def test_threads_of_a_process_on_several_nodes_are_not_held_for_its_memory():
    spread = process(813, [thread(813, 0, held=False), thread(814, 1, held=False)], {0: 500, 1: 500},
                     [PageGroup(7, 0, 500, {814: 50}), PageGroup(8, 0, 500, {813: 50})])
    _, second = two_passes(machine(cpus=2), spread)   # fits on one node: no span
    assert [(m.from_node, m.to_node) for m in migrations(second)] == [(0, 1)]
    assert moves(second) == {}


def test_a_busy_thread_free_to_leave_the_node_with_its_memory_is_held_there():
    home = process(811, [thread(811, 1, held=False)], {1: 950, 0: 50})
    roaming = process(812, [thread(812, 0, held=False)], {0: 800, 1: 200})       # not enough of it there
    idle = process(813, [thread(813, 0, 0.0, held=False)], {0: 1000})
    p = plan(machine(2, cpus=2), home, roaming, idle)
    assert [(a.tid, a.to_node) for a in p.actions] == [(811, 1)]
    assert p.actions[0].reason == ("holds it on node 1, where 95% of its memory is, before the kernel's "
                                   "scheduler takes it elsewhere")
    crowded = [process(900 + i, [thread(900 + i, 1, held=False)], {1: 1000}) for i in range(3)]
    moves_ = [(a.from_node, a.to_node) for a in plan(machine(2, cpus=2), *crowded).actions]
    assert sorted(moves_) == [(1, 0), (1, 1), (1, 1)]      # one makes room; the two left are held


def test_threads_that_write_the_same_memory_are_not_swapped_for_what_each_was_seen_writing_first():
    def pair(shared):   # two threads, their sampled writes on each other's node
        groups = [PageGroup(1, 0, 512, {811: 9, 812: 6} if shared else {811: 9}),
                  PageGroup(2, 1, 512, {812: 9, 811: 6} if shared else {812: 9})]
        return process(811, [thread(811, 1, access_pages={0: 90}), thread(812, 0, access_pages={1: 90})],
                       {0: 512, 1: 512}, groups)
    assert moves(plan(machine(), pair(False))) == {811: (1, 0), 812: (0, 1)}   # each to what it writes
    assert moves(plan(machine(), pair(True))) == {}                            # both write both: stay


def test_threads_of_a_process_bigger_than_a_node_are_held_on_the_nodes_it_spans():
    spread = process(813, [thread(813, 0, held=False), thread(814, 1, held=False), thread(815, 2)],
                     {0: 500, 1: 500}, [PageGroup(7, 0, 500, {814: 50})])
    first = plan(machine(count=3), spread)
    holds = {a.tid: a for a in first.actions if isinstance(a, MoveTask)}
    assert {tid: (m.from_node, m.to_node) for tid, m in holds.items()} == {813: (0, 0), 814: (1, 1)}
    assert "one of the nodes its process spans (0-2)" in holds[813].reason
    assert first.state.task_moved_at == {}
    # held now (and 815 already was): nothing more to do
    held = process(813, [thread(813, 0), thread(814, 1), thread(815, 2)], {0: 500, 1: 500})
    assert moves(plan(machine(count=3), held, state=first.state)) == {}


def test_a_group_written_from_two_nodes_alike_stays_whatever_the_sampling_noise():
    def spread(n):  # group 7 on node 0 written 3:1 from node 1, group 8 on node 1 the other way
        return process(813, [thread(813, 0), thread(814, 1)], {0: 500, 1: 500},
                       [PageGroup(7, 0, 500, {813: n, 814: 3 * n}), PageGroup(8, 1, 500, {813: 3 * n, 814: n})])
    _, second = two_passes(machine(), spread(1))    # 4 samples each: a lead of 0.5 is noise
    assert migrations(second) == []
    _, second = two_passes(machine(), spread(10))   # 40 samples each: it is not
    assert [(m.group_id, m.to_node) for m in migrations(second)] == [(7, 1), (8, 0)]
    one_writer = process(813, [thread(813, 0), thread(814, 1)], {0: 500, 1: 500},
                         [PageGroup(7, 0, 500, {814: 2}), PageGroup(8, 1, 500, {813: 2})])
    _, second = two_passes(machine(), one_writer)   # written from one node only: 2 samples will do
    assert [(m.group_id, m.to_node) for m in migrations(second)] == [(7, 1), (8, 0)]


def test_a_group_both_nodes_write_much_of_stays_with_the_threads_it_is_with():
    # the interpreter's pages of a job of two threads on two nodes: both write them, and
    # which of them a window saw first is chance; a lead of 70:30 on 200 samples is no noise
    # but no reason to move either (the other node would be as remote as this one is now)
    def job(lead, rest):   # each thread's own buffer (the most of it), the interpreter's group 7
        return process(813, [thread(813, 0), thread(814, 1)], {0: 2500, 1: 2000},
                       [PageGroup(1, 0, 2000, {813: 400}), PageGroup(2, 1, 2000, {814: 400}),
                        PageGroup(7, 0, 500, {813: rest, 814: lead})])
    _, second = two_passes(machine(), job(140, 60))
    assert migrations(second) == []
    _, second = two_passes(machine(), job(160, 40))         # 80:20, mostly one writer's: it moves
    assert [(m.group_id, m.to_node) for m in migrations(second)] == [(7, 1)]


def test_sparse_regions_left_elsewhere_by_a_spread_job_stay_when_its_memory_is_with_its_threads():
    # the S5 job after its threads were placed: its buffer (99% of its memory by the scan) on
    # the nodes they run on; windows also saw the interpreter's heap written on nodes 2 and 3,
    # where its main thread first touched it: regions of a few dozen pages, each counted as
    # 512 (a region's size), which made a fifth of what the windows saw
    def job(node_pages):
        buffer = [PageGroup(g, g % 2, 512, {813 + g % 2: 9}, window=1) for g in range(24)]
        heap = [PageGroup(100 + g, 2 + g % 2, 512, {813: 9}, window=1) for g in range(6)]
        return process(813, [thread(813, 0), thread(814, 1)], node_pages, buffer + heap)
    state = PolicyState(group_target={(813, 5813, 100 + g): 0 for g in range(6)},
                        group_window={(813, 5813, 100 + g): 2 for g in range(6)})   # voted by window 2
    assert migrations(plan(machine(4), job({0: 25000, 1: 25000, 2: 300, 3: 200}), state=state)) == []
    moved = plan(machine(4), job({0: 22000, 1: 22000, 2: 3000, 3: 3000}), state=state)   # an eighth elsewhere
    assert sorted(m.group_id for m in migrations(moved)) == [100, 101, 102, 103, 104, 105]


def test_numa02_pinned_threads_pull_their_own_slices_across():
    # Each thread pinned to its node, each slice first touched on the other node.
    numa02 = process(200, [thread(201, 0, user_pinned=True), thread(202, 1, user_pinned=True)], {0: 500, 1: 500},
                     [PageGroup(1, 1, 500, {201: 80}), PageGroup(2, 0, 500, {202: 75, 201: 5})])
    first, second = two_passes(machine(), numa02)
    assert first.actions == ()
    assert [(m.group_id, m.from_node, m.to_node) for m in second.actions] == [(1, 1, 0), (2, 0, 1)]
    assert second.actions[1].reason == "94% of its weighted sampled touches are from threads on node 1; two passes agree"


def test_pages_of_a_process_whose_threads_run_on_several_nodes_follow_the_touching_threads():
    p = process(200, [thread(201, 0, user_pinned=True), thread(202, 1, user_pinned=True)], {},
                [PageGroup(1, 2, 100, {201: 10}),          # -> node 0
                 PageGroup(2, 0, 100, {201: 2, 202: 30}),  # -> node 1
                 PageGroup(3, 0, 100),                     # nobody touched it: stays with thread 201
                 PageGroup(4, 0, 30, {201: 50, 202: 50}),   # shared evenly and already with a user: stays
                 PageGroup(5, 0, 30, {201: 47, 202: 53}),   # too small a difference: stays
                 PageGroup(6, 1, 100, {999: 40})])          # touched by a thread that is gone: stays
    _, second = two_passes(machine(4), p)
    assert [(m.group_id, m.to_node) for m in second.actions] == [(1, 0), (2, 1)]


def test_file_pages_on_another_node_do_not_keep_a_local_process_voting_on_its_strays():
    libs_elsewhere = process(811, [thread(811, 0, user_pinned=True)], {0: 900, 1: 100},
                             [PageGroup(1, 0, 900), PageGroup(2, 1, 10)])   # 90% local, 98.9% of what moves
    first, second = two_passes(machine(), libs_elsewhere)
    assert first.state.group_target == {} and second.actions == ()


def test_a_process_local_enough_has_its_last_stray_pages_left_alone():
    def with_stray(stray):
        return process(811, [thread(811, 0, user_pinned=True)], {0: 1000 - stray, 1: stray},
                       [PageGroup(1, 0, 1000 - stray), PageGroup(2, 1, stray)])
    _, second = two_passes(machine(), with_stray(15))           # 98.5% local: what is left stays
    assert migrations(second) == []
    _, second = two_passes(machine(), with_stray(100))          # 90%: it comes
    assert [(m.group_id, m.to_node) for m in second.actions] == [(2, 0)]


def test_an_idle_threads_few_writes_do_not_pull_memory_to_where_it_sleeps():
    # tid 203 barely runs, on node 3; its 2 writes are all its writes, so as a share of its
    # own they would outweigh the sweepers' hundreds
    p = process(200, [thread(201, 0, user_pinned=True), thread(202, 1, user_pinned=True),
                      thread(203, 3, runnable=0.0)], {},
                [PageGroup(1, 2, 100, {201: 300, 202: 100, 203: 2})])
    _, second = two_passes(machine(4, distances=PAIRS), p)
    assert [(m.group_id, m.to_node) for m in second.actions] == [(1, 0)]


def test_memory_no_thread_was_seen_touching_leaves_a_node_none_of_its_threads_run_on():
    # the S5 machine: threads on nodes 0 and 1 (two on 1); what sits on 2 and 3 is remote to all
    p = process(200, [thread(201, 0, user_pinned=True), thread(202, 1, user_pinned=True),
                      thread(203, 1, user_pinned=True)], {},
                [PageGroup(1, 3, 100),                     # -> node 1: as near as 0, more threads
                 PageGroup(2, 2, 300, {999: 40}),          # touched by a thread that is gone only
                 PageGroup(3, 3, 200, {201: 5})])          # seen: goes to its writer, first (full weight)
    _, second = two_passes(machine(4, distances=PAIRS), p)
    assert [(m.group_id, m.to_node) for m in second.actions] == [(3, 0), (2, 1), (1, 1)]
    assert second.actions[2].reason == ("none of its process's threads runs on node 3; node 1 is the "
                                        "nearest they run on; two passes agree")


def test_the_two_pass_filter_cancels_when_the_wanted_node_changes():
    def pinned_on(node):
        return process(811, [thread(811, node, user_pinned=True)], {2: 100}, [PageGroup(1, 2, 100)])
    nodes = machine(3)
    first = plan(nodes, pinned_on(0))
    second = plan(nodes, pinned_on(1), state=first.state, time=NOW + 1)
    third = plan(nodes, pinned_on(1), state=second.state, time=NOW + 2)
    assert first.actions == second.actions == ()
    assert [(m.from_node, m.to_node) for m in third.actions] == [(2, 1)]


def test_a_process_with_its_own_memory_policy_keeps_its_memory():
    bound = process(811, [thread(811, 1, user_pinned=True)], {0: 1000}, [PageGroup(1, 0, 1000)], own_mempolicy=True)
    first, second = two_passes(machine(), bound)
    assert first.actions == second.actions == ()


def test_pages_of_a_process_whose_policies_are_not_read_yet_wait_with_their_votes_standing():
    unread = process(811, [thread(811, 1, user_pinned=True)], {0: 1000}, [PageGroup(1, 0, 1000)],
                     mempolicy_known=False)
    first, second = two_passes(machine(), unread)
    assert first.actions == second.actions == ()
    assert first.state.group_target == {(811, 5811, 1): 1} and second.state.group_agreed == {(811, 5811, 1): 1}
    third = plan(machine(), replace(unread, mempolicy_known=True), state=second.state, time=NOW + 2)
    assert [(m.group_id, m.to_node) for m in migrations(third)] == [(1, 1)]   # read now: no new vote needed
    bound = plan(machine(), replace(unread, own_mempolicy=True), state=second.state, time=NOW + 2)
    assert bound.actions == ()


def test_a_growing_process_gets_no_page_votes_and_loses_those_cast():
    p = process(811, [thread(811, 1, user_pinned=True)], {0: 1000}, [PageGroup(1, 0, 1000)])
    first = plan(machine(), p)
    assert first.state.group_target == {(811, 5811, 1): 1}
    grown = plan(machine(), replace(p, growing=True), state=first.state, time=NOW + 1)
    assert grown.actions == () and grown.state.group_target == {}
    steady = plan(machine(), p, state=grown.state, time=NOW + 2)
    assert steady.actions == ()                                    # a first vote again
    assert [(m.group_id, m.to_node) for m in migrations(plan(machine(), p, state=steady.state, time=NOW + 3))] \
        == [(1, 1)]


def test_pages_of_a_process_about_to_move_stay_put():
    p = process(811, [thread(811, 0)], {1: 1000}, [PageGroup(1, 1, 1000)])
    state = PolicyState(group_target={(811, 5811, 1): 0})
    result = plan(machine(), p, state=state)
    assert moves(result) == {811: (0, 1)} and migrations(result) == []
    assert result.state.group_target == {}


def test_migrations_take_the_largest_gains_first_within_the_page_budget():
    p = process(811, [thread(811, 0, user_pinned=True)], {1: 600},
                [PageGroup(1, 1, 100), PageGroup(2, 1, 300), PageGroup(3, 1, 200)])
    _, second = two_passes(machine(), p, pages_to_migrate=450)
    assert [(m.group_id, m.pages) for m in second.actions] == [(2, 300), (1, 100)]


def test_a_group_bigger_than_the_whole_budget_goes_alone():
    p = process(811, [thread(811, 0, user_pinned=True)], {1: 600}, [PageGroup(1, 1, 500), PageGroup(2, 1, 50)])
    _, second = two_passes(machine(), p, pages_to_migrate=100)
    assert [m.group_id for m in second.actions] == [1]


def test_a_full_node_spills_to_the_nearest_node_with_room():
    # 256 pages of 1 MiB; node 0 has 300 MB free, so receiving them would leave it under its 256 MB reserve.
    p = process(811, [thread(811, 0, user_pinned=True)], {3: 256}, [PageGroup(1, 3, 256)])
    _, second = two_passes(machine(4, distances=PAIRS, free0=300.0), p, page_size=2**20)
    assert [(m.from_node, m.to_node) for m in second.actions] == [(3, 1)]
    assert second.actions[0].reason == ("its threads run on node 0; two passes agree; node 0 would fall below its "
                                        "256 MB free reserve, node 1 is the nearest with room")


def test_no_spill_to_a_node_no_nearer_than_where_the_pages_are():
    p = process(811, [thread(811, 0, user_pinned=True)], {1: 256}, [PageGroup(1, 1, 256)])
    _, second = two_passes(machine(4, distances=PAIRS, free0=300.0), p, page_size=2**20)
    assert second.actions == ()


def test_the_reserve_counts_pages_already_queued_this_pass():
    a = process(811, [thread(811, 0, user_pinned=True)], {1: 200}, [PageGroup(1, 1, 200)])
    b = process(812, [thread(812, 0, user_pinned=True)], {1: 100}, [PageGroup(1, 1, 100)])
    _, second = two_passes(machine(free0=500.0), a, b, page_size=2**20)
    assert [(m.pid, m.to_node) for m in second.actions] == [(811, 0)]


def test_the_reserve_may_be_a_percentage_of_the_node():
    p = process(811, [thread(811, 0, user_pinned=True)], {1: 100}, [PageGroup(1, 1, 100)])
    _, second = two_passes(machine(free0=600.0), p, page_size=2**20, node_reserve_mb=0, node_reserve_percent=50)
    assert second.actions == ()


def test_a_group_just_migrated_is_not_migrated_again_within_settle_seconds():
    nodes = machine(3)
    on_node = [process(811, [thread(811, n, user_pinned=True)], {2: 100}, [PageGroup(1, 2, 100)]) for n in (0, 1)]
    first, second = two_passes(nodes, on_node[0])
    assert migrations(second)
    # The thread is now pinned to node 1 and the group arrived on node 0.
    moved = process(811, [thread(811, 1, user_pinned=True)], {0: 100}, [PageGroup(1, 0, 100)])
    third = plan(nodes, moved, state=second.state, time=NOW + 2, settle_seconds=10)
    fourth = plan(nodes, moved, state=third.state, time=NOW + 3, settle_seconds=10)
    assert third.actions == fourth.actions == ()
    later = plan(nodes, moved, state=fourth.state, time=NOW + 12, settle_seconds=10)
    later = plan(nodes, moved, state=later.state, time=NOW + 13, settle_seconds=10)
    assert [(m.from_node, m.to_node) for m in later.actions] == [(0, 1)]


def test_switching_memory_follows_cpu_off_moves_no_pages():
    pinned = process(811, [thread(811, 1, user_pinned=True)], {0: 1000}, [PageGroup(7, 0, 1000)])
    first, second = two_passes(machine(), pinned, memory_follows_cpu=False)
    assert first.actions == second.actions == ()


def test_state_forgets_threads_and_groups_that_are_gone():
    state = PolicyState(task_moved_at={(1, 5001, 1): NOW - 1, (9, 1, 9): NOW - 1},
                        group_target={(9, 1, 1): 0}, group_migrated_at={(9, 1, 1): NOW - 1})
    p = plan(machine(), process(1, [thread(1, 0)], {0: 10}), state=state)
    assert p.state == PolicyState(task_moved_at={(1, 5001, 1): NOW - 1})
