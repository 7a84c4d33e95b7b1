"""The adapter from statistics to the policy's snapshot, with hand-made statistics."""

import os
from dataclasses import replace

from autonumad.kernel.files import KernelFiles
from autonumad.kernel.procfs import CLOCK_TICKS, MemPolicy
from autonumad.mm_stats import MmSnapshot, VmaStats
from autonumad.policy_snapshot import (GroupRange, SnapshotBuilder, group_id, locality_bound, mapping_groups,
                                      process_locality)
from autonumad.processes import ProcessInfo, ProcessKey
from autonumad.task_stats import REGION_BYTES, RegionTouches, ThreadStats
from autonumad.topology import read_topology

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "sysfs")
TOPO = read_topology(KernelFiles(os.path.join(FIXTURES, "2node")))
ALL = frozenset(TOPO.cpus_online)
KEY = ProcessKey(100, 500)
HEAP = 0x10000000
LIB = 0x7f0000000000


def info(rss_kb=100 << 10):
    return ProcessInfo(key=KEY, comm="app", exe_name="app", uid=0, user="root", rss_kb=rss_kb,
                       num_threads=2, cpu_ticks=0, cpu_percent=100.0, cgroup="/")


def mm(policy=MemPolicy("default")):
    return MmSnapshot(KEY, True, (
        VmaStats(HEAP, HEAP + (64 << 20), "heap", "[heap]", policy, {0: 1000.0, 1: 15000.0}),
        VmaStats(LIB, LIB + (4 << 20), "private", "/usr/lib/libc.so.6", policy, {1: 500.0}),
    ), 0.0)


def thread(tid, node, run_ns=0, start_ticks=0):
    return ThreadStats(tid, start_ticks, "app", TOPO.nodes[node].cpus[0], node, run_ns)


def build(builder, now, threads, affinity=lambda tid: ALL, owned=lambda key, tid: None, topology=TOPO, **kw):
    process = info(kw.pop("rss_kb", 100 << 10))
    return builder.build(now, 100.0, topology, [(process, mm(kw.pop("policy", MemPolicy("default"))), threads)],
                         affinity, owned, True, True, **kw)


def test_a_busy_thread_seen_for_the_first_time_is_weighed_by_its_lifetime():
    snap, _ = build(SnapshotBuilder(), 10.0, [thread(101, 0, run_ns=45 * 10**9, start_ticks=10 * CLOCK_TICKS)])
    assert abs(snap.processes[0].tasks[0].runnable_weight - 0.5) < 1e-9


def test_a_thread_running_at_its_first_look_counts_as_busy_whatever_its_lifetime_share():
    # a worker that waited 36 s for its job to set up, then ran 4 s: 0.1 of its life
    waited = replace(thread(101, 0, run_ns=4 * 10**9, start_ticks=60 * CLOCK_TICKS), state="R")
    asleep = replace(waited, tid=102, state="S")
    old = replace(waited, tid=103, last_run_ns=9 * 10**9, start_time=10 * CLOCK_TICKS)   # 90 s old: measured
    snap, _ = build(SnapshotBuilder(), 10.0, [waited, asleep, old])
    assert [round(t.runnable_weight, 3) for t in snap.processes[0].tasks] == [0.5, 0.1, 0.1]


def test_later_passes_weigh_run_time_since_the_previous_pass():
    b = SnapshotBuilder()
    build(b, 10.0, [thread(101, 0, run_ns=1 * 10**9)])
    snap, _ = build(b, 12.0, [thread(101, 0, run_ns=2 * 10**9)])
    assert abs(snap.processes[0].tasks[0].runnable_weight - 0.5) < 1e-9


def test_busy_cpus_not_explained_by_managed_threads_are_counted_per_node():
    b = SnapshotBuilder()
    build(b, 10.0, [thread(101, 0, run_ns=1 * 10**9)])
    # 2 s later: thread 101 ran 1 s on node 0 (weight 0.5); node 0 was 1.6 CPUs busy and
    # node 1 0.5: one whole CPU on node 0 is someone else's, node 1's half CPU is noise;
    # counted once a second reading agrees
    snap, _ = build(b, 12.0, [thread(101, 0, run_ns=2 * 10**9)], node_busy={0: 1.6, 1: 0.5})
    assert {n.id: n.other_busy_cpus for n in snap.nodes} == {0: 0, 1: 0}
    snap, _ = build(b, 14.0, [thread(101, 0, run_ns=3 * 10**9)], node_busy={0: 1.7, 1: 0.4})
    assert {n.id: n.other_busy_cpus for n in snap.nodes} == {0: 1, 1: 0}
    snap, _ = build(b, 15.0, [thread(101, 0, run_ns=3 * 10**9)])   # no reading: nothing counted
    assert {n.id: n.other_busy_cpus for n in snap.nodes} == {0: 0, 1: 0}
    snap, _ = build(b, 16.0, [thread(101, 0, run_ns=4 * 10**9)], node_busy={0: 0.5, 1: 0.4})
    assert {n.id: n.other_busy_cpus for n in snap.nodes} == {0: 0, 1: 0}


def test_a_burst_of_unmanaged_work_for_one_interval_is_not_counted():
    b = SnapshotBuilder()
    build(b, 10.0, [thread(101, 0, run_ns=1 * 10**9)])
    build(b, 12.0, [thread(101, 0, run_ns=2 * 10**9)], node_busy={0: 0.5, 1: 0.1})
    # the daemon's own page moves kept node 1 busy for one interval: its threads stay put
    snap, _ = build(b, 14.0, [thread(101, 0, run_ns=3 * 10**9)], node_busy={0: 0.5, 1: 1.0})
    assert {n.id: n.other_busy_cpus for n in snap.nodes} == {0: 0, 1: 0}
    snap, _ = build(b, 16.0, [thread(101, 0, run_ns=4 * 10**9)], node_busy={0: 0.5, 1: 0.1})
    assert {n.id: n.other_busy_cpus for n in snap.nodes} == {0: 0, 1: 0}


def test_a_process_whose_memory_grew_since_the_last_pass_is_growing():
    b = SnapshotBuilder()
    grown = [build(b, float(i), [thread(101, 0)], rss_kb=kb)[0].processes[0].growing
             for i, kb in enumerate((100 << 10, 110 << 10, 111 << 10, 111 << 10))]
    assert grown == [False, True, False, False]   # first sight: nothing to compare; +1%: steady
    b.forget_rss(KEY.pid)                         # seen holding steady since: judged from now on
    assert not build(b, 5.0, [thread(101, 0)], rss_kb=200 << 10)[0].processes[0].growing
    assert build(b, 6.0, [thread(101, 0)], rss_kb=300 << 10)[0].processes[0].growing


def test_a_narrowed_affinity_is_a_user_pin_unless_the_daemon_set_it():
    node1 = frozenset(TOPO.nodes[1].cpus)
    snap, _ = build(SnapshotBuilder(), 1.0, [thread(101, 1), thread(102, 1)], affinity=lambda tid: node1,
                    owned=lambda key, tid: node1 if tid == 101 else None)
    pinned = {t.tid: t.user_pinned for t in snap.processes[0].tasks}
    assert pinned == {101: False, 102: True}
    assert not snap.processes[0].user_pinned


def test_a_narrowed_affinity_is_offered_as_an_inherited_pin_before_it_counts_as_a_user_pin():
    node1 = frozenset(TOPO.nodes[1].cpus)
    asked = []

    def inherited(process, tid, affinity, started):
        asked.append((process.pid, tid, affinity))
        return affinity if tid == 102 else None

    snap, _ = build(SnapshotBuilder(), 1.0, [thread(101, 1), thread(102, 1)], affinity=lambda tid: node1,
                    inherited_pin=inherited)
    assert {t.tid: t.user_pinned for t in snap.processes[0].tasks} == {101: True, 102: False}
    assert [tid for _, tid, _ in asked] == [101, 102] and all(a == node1 for _, _, a in asked)
    build(SnapshotBuilder(), 1.0, [thread(101, 1)], inherited_pin=inherited)  # not narrowed: not asked
    assert len(asked) == 2


def test_the_daemons_affinity_stays_its_own_when_some_of_its_cpus_go_offline():
    node1 = frozenset(TOPO.nodes[1].cpus)  # 2-3, as the daemon set it
    cpu3_offline = replace(TOPO, cpus_online=(0, 1, 2), cpus_offline=(3,),
                           nodes={**TOPO.nodes, 1: replace(TOPO.nodes[1], cpus=(2,), offline_cpus=(3,))})
    snap, _ = build(SnapshotBuilder(), 1.0, [thread(101, 1), thread(102, 1)], topology=cpu3_offline,
                    affinity=lambda tid: frozenset({2}), owned=lambda key, tid: node1 if tid == 101 else None)
    assert {t.tid: t.user_pinned for t in snap.processes[0].tasks} == {101: False, 102: True}
    assert [n.cpus for n in snap.nodes] == [(0, 1), (2,)]


def test_a_thread_is_held_on_its_node_when_its_affinity_has_no_cpu_of_another_node():
    node1 = frozenset(TOPO.nodes[1].cpus)
    affinities = {101: node1, 102: ALL, 103: frozenset({3})}
    snap, _ = build(SnapshotBuilder(), 1.0, [thread(101, 1), thread(102, 1), thread(103, 1)],
                    affinity=affinities.get, owned=lambda key, tid: node1 if tid == 101 else None)
    assert {t.tid: t.held for t in snap.processes[0].tasks} == {101: True, 102: False, 103: True}


def test_private_anonymous_mappings_become_page_groups_and_libraries_do_not():
    snap, groups = build(SnapshotBuilder(), 1.0, [thread(101, 0)])
    ids = {g.id for g in snap.processes[0].page_groups}
    assert ids == {group_id(HEAP, 0), group_id(HEAP, 1)}
    assert groups[(KEY.pid, KEY.start_time)][group_id(HEAP, 1)].start == HEAP


def test_a_group_range_narrows_to_where_the_sample_found_its_pages_when_it_kept_them_all():
    strays = (HEAP + (60 << 20), HEAP + (61 << 20))     # node 0's pages sit near the heap's end
    base = replace(mm(), stride=16, local_nodes=frozenset({1}), off_node_addrs=strays, off_node_nodes=(0, 0))
    whole = mapping_groups(base, [], ())
    assert whole[group_id(HEAP, 0)][1] == GroupRange(HEAP, HEAP + (64 << 20), 0)   # not all kept: the whole
    narrow = mapping_groups(replace(base, off_node_complete=True), [], ())
    assert narrow[group_id(HEAP, 0)][1] == GroupRange(HEAP + (60 << 20) - 16 * 4096,
                                                      HEAP + (61 << 20) + 17 * 4096, 0)
    assert narrow[group_id(HEAP, 1)][1] == GroupRange(HEAP, HEAP + (64 << 20), 1)  # the local node's: untouched


def test_sampled_strays_another_process_maps_too_are_not_the_group_s_to_move():
    own, shared = HEAP + (10 << 20), (HEAP + (40 << 20), HEAP + (41 << 20))   # shared since a fork, say
    base = replace(mm(), stride=100, local_nodes=frozenset({1}), off_node_addrs=(own, *shared), off_node_nodes=(0, 0, 0),
                   off_node_complete=True)
    assert mapping_groups(base, [], ())[group_id(HEAP, 0)][0].pages == 1000
    groups = mapping_groups(replace(base, off_node_shared=frozenset(shared)), [], ())
    group, span = groups[group_id(HEAP, 0)]
    assert group.pages == 1000 - 2 * 100                                        # two samples of 100 pages each
    assert span == GroupRange(own - 100 * 4096, own + 101 * 4096, 0)            # narrowed to its own pages
    all_shared = replace(base, off_node_addrs=shared, off_node_nodes=(0, 0), off_node_shared=frozenset(shared))
    assert mapping_groups(replace(all_shared, vmas=(replace(base.vmas[0], node_pages={0: 200.0, 1: 15000.0}),)),
                          [], ()).keys() == {group_id(HEAP, 1)}                 # nothing of its own left there


def test_groups_found_unmovable_are_left_out():
    snap, _ = build(SnapshotBuilder(), 1.0, [thread(101, 0)],
                    skip_groups={(KEY.pid, KEY.start_time, group_id(HEAP, 1))})
    assert {g.id for g in snap.processes[0].page_groups} == {group_id(HEAP, 0)}


def test_a_node_whose_pages_of_the_process_were_found_unmovable_has_its_groups_left_out():
    snap, groups = build(SnapshotBuilder(), 1.0, [thread(101, 0)], skip_sources={(KEY.pid, KEY.start_time, 1)})
    assert {g.id for g in snap.processes[0].page_groups} == {group_id(HEAP, 0)}
    assert set(groups[(KEY.pid, KEY.start_time)]) == {group_id(HEAP, 0)}
    assert snap.processes[0].node_pages.get(1)              # its pages there still count where they are


def test_sampled_writes_make_region_groups_with_their_writers():
    regions = {KEY: {HEAP: RegionTouches({101: 30}, {1: 30}, window=2),
                     HEAP + REGION_BYTES: RegionTouches({102: 10, 101: 10}, {0: 15, 1: 5}, window=1)}}
    snap, groups = build(SnapshotBuilder(), 1.0, [thread(101, 0), thread(102, 1)], regions=regions)
    by_id = {g.id: g for g in snap.processes[0].page_groups}
    first = by_id[group_id(HEAP, 1)]
    assert first.pages == REGION_BYTES // 4096 and first.touches == {101: 30} and first.window == 2
    assert by_id[group_id(HEAP + REGION_BYTES, 0)].pages == 384
    assert by_id[group_id(HEAP + REGION_BYTES, 0)].window == 1     # each region: the last window that saw it
    assert groups[(KEY.pid, KEY.start_time)][group_id(HEAP, 1)].end == HEAP + REGION_BYTES


def test_region_groups_are_recounted_only_when_the_regions_or_their_writers_nodes_change(monkeypatch):
    from autonumad import policy_snapshot
    calls = []
    real = policy_snapshot.region_groups
    monkeypatch.setattr(policy_snapshot, "region_groups", lambda *a: calls.append(1) or real(*a))
    regions = {KEY: {HEAP: RegionTouches({101: 30}, {1: 30}, window=2)}}
    b = SnapshotBuilder()
    threads = [thread(101, 0), thread(102, 1)]
    first, _ = build(b, 1.0, threads, regions=regions, region_versions={KEY: 1})
    again, _ = build(b, 2.0, threads, regions=regions, region_versions={KEY: 1})
    assert len(calls) == 1 and again.processes[0].page_groups == first.processes[0].page_groups
    assert again.processes[0].touch_locality == 0.0
    build(b, 3.0, [thread(101, 1), thread(102, 1)], regions=regions, region_versions={KEY: 1})  # 101 moved
    regions[KEY][HEAP].nodes[0] = regions[KEY][HEAP].nodes.pop(1)                  # the daemon moved it
    moved, _ = build(b, 4.0, [thread(101, 1), thread(102, 1)], regions=regions, region_versions={KEY: 2})
    assert len(calls) == 3 and moved.processes[0].page_groups[0].node == 0
    build(b, 5.0, threads, regions=regions)                                         # no versions: no cache
    build(b, 6.0, threads, regions=regions)
    assert len(calls) == 5


def test_own_bind_policy_is_reported():
    snap, _ = build(SnapshotBuilder(), 1.0, [thread(101, 0)], policy=MemPolicy("bind", (1,)))
    assert snap.processes[0].own_mempolicy


def test_process_locality_weighs_threads_by_how_busy_they_are():
    from autonumad.policy import ProcessView, TaskView
    view = ProcessView(1, 2, "app", {0: 900, 1: 100}, (TaskView(1, 1, 0.01), TaskView(2, 0, 0.99)), ())
    assert abs(process_locality(view) - (0.01 * 0.1 + 0.99 * 0.9)) < 1e-9
    idle = ProcessView(1, 2, "app", {0: 900, 1: 100}, (TaskView(1, 1, 0.0), TaskView(2, 0, 0.0)), ())
    assert abs(process_locality(idle) - 0.5) < 1e-9


def test_locality_bound_is_the_largest_share_of_busy_threads_on_one_node():
    from autonumad.policy import ProcessView, TaskView
    tasks = (TaskView(1, 0, 0.01), TaskView(2, 0, 1.0), TaskView(3, 1, 1.0), TaskView(4, 2, 0.9), TaskView(5, 0, 0.8))
    assert locality_bound(ProcessView(1, 2, "numa01", {0: 100}, tasks, ()), 0.2) == 0.5   # 2 of 4 busy on node 0
    assert locality_bound(ProcessView(1, 2, "one", {0: 100}, tasks[1:2], ()), 0.2) == 1.0
    assert locality_bound(ProcessView(1, 2, "idle", {0: 100}, tasks[:1], ()), 0.2) is None


def test_process_locality_is_memory_on_each_threads_node():
    snap, _ = build(SnapshotBuilder(), 1.0, [thread(101, 1), thread(102, 0)])
    view = snap.processes[0]
    total = sum(view.node_pages.values())
    assert abs(process_locality(view) - (view.node_pages[1] + view.node_pages[0]) / total / 2) < 1e-9


def test_touch_locality_is_the_share_of_sampled_memory_local_to_its_writers():
    from autonumad.policy import ProcessView, TaskView
    from autonumad.policy_snapshot import touch_locality
    regions = {0x200000: RegionTouches({1: 10}, {0: 10}),            # thread 1's, on its node
               0x400000: RegionTouches({2: 10, 9: 4}, {1: 5, 0: 5}),  # thread 2's, half on its node; 9 exited
               0x600000: RegionTouches({1: 90, 2: 30}, {0: 2})}       # shared, hot: counts as one region
    assert touch_locality(regions, {1: 0, 2: 1}) == (1 + 0.5 + 0.75) / 3
    assert touch_locality(regions, {7: 0}) is None and touch_locality({}, {1: 0}) is None
    # numa02 done: half the pages on each node, each thread writing its own half
    tasks = (TaskView(1, 0, 1.0), TaskView(2, 1, 1.0))
    split = ProcessView(5, 1, "numa02", {0: 100, 1: 100}, tasks)
    assert process_locality(split) == 0.5
    assert process_locality(ProcessView(5, 1, "numa02", {0: 100, 1: 100}, tasks, touch_locality=1.0)) == 1.0
    # numa01: both threads write all of it, all on node 0; the windows saw node 1's thread
    # write first most of the time (chance): by the scan, half of it is local to each
    shared = ProcessView(5, 1, "numa01", {0: 200}, tasks, touch_locality=0.3)
    assert process_locality(shared) == 0.3 and process_locality(shared, shared_memory=True) == 0.5
