import errno

from autonumad.actuator import Actuator, MigrationRateLimit, page_status_counts
from autonumad.kernel.files import ProcessGone
from autonumad.kernel.numa_calls import RangeMoves
from autonumad.state_file import DaemonState, StateFile, ThreadKey

NODE_CPUS = {0: frozenset({0, 1}), 1: frozenset({2, 3}), 2: frozenset()}


class FakeKernel:
    """The kernel as the actuator sees it, CPU hotplug included: `affinity` is each thread's
    mask as the kernel keeps it, sched_getaffinity shows its online CPUs only, and
    sched_setaffinity refuses a mask without an online CPU."""

    def __init__(self):
        self.possible = frozenset({0, 1, 2, 3})
        self.online = set(self.possible)
        self.affinity = {101: self.possible, 102: self.possible}
        self.start = {100: 5000}
        self.start_after_call = None
        self.refuse_next_set = None
        self.page_nodes = {}
        self.calls = []

    def get_affinity(self, tid):
        if tid not in self.affinity:
            raise ProcessGone(errno.ESRCH, "gone")
        return self.affinity[tid] & self.online

    def set_affinity(self, tid, cpus):
        self.calls.append(("set_affinity", tid, frozenset(cpus)))
        if tid not in self.affinity:
            raise ProcessGone(errno.ESRCH, "gone")
        if self.refuse_next_set is not None:
            exc, self.refuse_next_set = self.refuse_next_set, None
            raise exc
        if not set(cpus) & self.online:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.affinity[tid] = frozenset(cpus)
        if self.start_after_call is not None:
            self.start[100] = self.start_after_call

    def online_cpus(self):
        return frozenset(self.online)

    def possible_cpus(self):
        return self.possible

    def take_offline(self, *cpus, asleep=()):
        """CPUs go offline; a thread left without an online CPU is reset to every CPU
        when it next runs (the threads `asleep` have not run yet)."""
        self.online -= set(cpus)
        for tid, mask in self.affinity.items():
            if not mask & self.online and tid not in asleep:
                self.affinity[tid] = self.possible

    def bring_online(self, *cpus):
        self.online |= set(cpus)

    def move_pages(self, pid, addrs, node):
        self.calls.append(("move_pages", pid, list(addrs), node))
        out = []
        for a in addrs:
            if a == 0xBAD000:
                out.append(-errno.EBUSY)
            else:
                self.page_nodes[a] = node
                out.append(node)
        if self.start_after_call is not None:
            self.start[100] = self.start_after_call
        return out

    def move_ranges(self, pid, ranges, from_node, to_node, limit, resume):
        self.calls.append(("move_ranges", pid, list(ranges), from_node, to_node, limit, resume))
        tried, moved, failures, moved_addrs = [0] * len(ranges), [0] * len(ranges), {}, []
        at = resume
        for r, (start, end) in enumerate(ranges):
            for addr in sorted(a for a, n in self.page_nodes.items() if start <= a < end and n == from_node):
                if (r, addr) < resume:
                    continue
                if sum(tried) == limit:
                    at = (r, addr)
                    break
                tried[r] += 1
                if addr == 0xBAD000:
                    failures[errno.EBUSY] = failures.get(errno.EBUSY, 0) + 1
                else:
                    self.page_nodes[addr] = to_node
                    moved[r] += 1
                    moved_addrs.append(addr)
            else:
                continue
            break
        else:
            at = (len(ranges), 0)
        if self.start_after_call is not None:
            self.start[100] = self.start_after_call
        return RangeMoves(tried, moved, failures, moved_addrs, len(moved_addrs), at)

    def start_time(self, pid):
        return self.start.get(pid)


def make(tmp_path, kernel, pages=1000, clock=lambda: 0.0):
    return Actuator(kernel, lambda n: NODE_CPUS[n], DaemonState(), StateFile(str(tmp_path / "state.json")),
                    MigrationRateLimit(pages, 100, clock=clock))


def test_move_task_pins_thread_and_records_original_in_state_file(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    assert act.move_task(100, 5000, 101, 1, "app") == "done"
    assert k.affinity[101] == {2, 3}
    saved = StateFile(str(tmp_path / "state.json")).load()
    rec = saved.affinities[ThreadKey(100, 5000, 101)]
    assert rec.original == {0, 1, 2, 3} and rec.applied == {2, 3}


def test_second_move_keeps_the_first_original(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    act.move_task(100, 5000, 101, 0)
    assert act.state.affinities[ThreadKey(100, 5000, 101)].original == {0, 1, 2, 3}


def test_move_task_refuses_a_node_without_cpus(tmp_path):
    act = make(tmp_path, FakeKernel())
    assert act.move_task(100, 5000, 101, 2).startswith("refused")


def test_pid_reused_before_the_move_is_skipped(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    assert act.move_task(100, 4999, 101, 1).startswith("skipped")
    assert k.calls == [] and act.counters["pid_reuse_caught_before"] == 1


def test_pid_reused_during_the_move_is_undone_and_counted(tmp_path):
    k = FakeKernel()
    k.start_after_call = 7777
    act = make(tmp_path, k)
    assert act.move_task(100, 5000, 101, 1).startswith("undone")
    assert k.affinity[101] == {0, 1, 2, 3}
    assert act.counters["pid_reuse_undone"] == 1
    assert act.state.affinities == {}


def test_vanished_thread_is_counted_not_raised(tmp_path):
    act = make(tmp_path, FakeKernel())
    assert act.move_task(100, 5000, 999, 1).startswith("skipped")
    assert act.counters["process_gone"] == 1


def test_restore_puts_back_only_what_we_set(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    act.move_task(100, 5000, 102, 1)
    k.affinity[102] = frozenset({1})  # someone else re-pinned it after us
    assert act.restore() == 1
    assert k.affinity[101] == {0, 1, 2, 3} and k.affinity[102] == {1}
    assert StateFile(str(tmp_path / "state.json")).load().affinities == {}


def test_restarted_daemon_restores_from_the_state_file(tmp_path):
    k = FakeKernel()
    make(tmp_path, k).move_task(100, 5000, 101, 1)
    fresh = Actuator(k, lambda n: NODE_CPUS[n], StateFile(str(tmp_path / "state.json")).load(),
                     StateFile(str(tmp_path / "state.json")), MigrationRateLimit(10, 100))
    assert fresh.owned_affinity(100, 5000, 101) is not None
    assert fresh.restore() == 1 and k.affinity[101] == {0, 1, 2, 3}


def test_migration_rate_limit_defers_and_refills():
    now = [0.0]
    rl = MigrationRateLimit(100, 1000, clock=lambda: now[0])
    assert rl.take(150) == 100
    assert rl.take(10) == 0
    now[0] = 0.5
    assert rl.take(100) == 50
    assert abs(rl.mb_per_second() - 100 * 4096 / (1 << 20)) < 1e-9


def test_migrate_ranges_counts_statuses_by_kind_and_gives_back_what_found_no_page(tmp_path):
    k = FakeKernel()
    k.page_nodes = {0x1000: 0, 0x2000: 0, 0xBAD000: 0, 0x3000: 1}
    act = make(tmp_path, k, pages=1000)
    result, moves = act.migrate_ranges(100, 5000, [(0, 0x4000), (0xBAD000, 0xBAE000)], 0, 1, (0, 0), 1000)
    assert result == "done" and moves.moved == [2, 0] and moves.tried == [2, 1] and moves.done
    assert page_status_counts(act.counters) == {"EBUSY": 1} and act.counters["pages_migrated"] == 2
    assert k.page_nodes == {0x1000: 1, 0x2000: 1, 0xBAD000: 0, 0x3000: 1}
    assert act.rate_limit.tokens == 1000 - 3          # the grant less the pages tried


def test_migrate_ranges_stops_at_the_grant_and_resumes_there(tmp_path):
    k = FakeKernel()
    k.page_nodes = {0x1000: 0, 0x2000: 0, 0x3000: 0}
    act = make(tmp_path, k, pages=2)
    result, moves = act.migrate_ranges(100, 5000, [(0, 0x4000)], 0, 1, (0, 0), 2)
    assert result == "done" and moves.moved == [2] and moves.resume == (0, 0x3000) and not moves.done
    assert act.migrate_ranges(100, 5000, [(0, 0x4000)], 0, 1, moves.resume, 2)[0] == "deferred: migration rate limit"


def test_migrate_ranges_checks_the_process_before_and_undoes_a_move_that_hit_a_new_one(tmp_path):
    k = FakeKernel()
    k.page_nodes = {0x1000: 0}
    act = make(tmp_path, k)
    assert act.migrate_ranges(100, 4999, [(0, 0x2000)], 0, 1, (0, 0), 10) == \
        ("skipped: process gone or PID reused", None)
    k.start_after_call = 1
    assert act.migrate_ranges(100, 5000, [(0, 0x2000)], 0, 1, (0, 0), 10) == ("undone: PID reused during the move", None)
    assert k.page_nodes[0x1000] == 0
    assert act.counters["pid_reuse_caught_before"] == 1 and act.counters["pid_reuse_undone"] == 1


def test_migrate_ranges_refused_as_a_whole_fails_gives_back_its_grant_and_goes_on(tmp_path):
    k = FakeKernel()

    def no_memory(*args):
        raise OSError(errno.ENODEV, "No such device")

    k.move_ranges = no_memory
    act = make(tmp_path, k, pages=100)
    assert act.migrate_ranges(100, 5000, [(0, 0x2000)], 0, 2, (0, 0), 100) == ("failed: No such device", None)
    assert act.rate_limit.tokens == 100 and act.counters["migrations_failed"] == 1


# ---- CPU hotplug ----------------------------------------------------------------------

def test_a_move_pins_only_the_cpus_of_the_node_online_at_that_moment(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)  # the pass's topology still says node 1 has CPUs 2-3
    k.take_offline(3)
    assert act.move_task(100, 5000, 101, 1) == "done"
    assert k.affinity[101] == {2}
    assert act.state.affinities[ThreadKey(100, 5000, 101)].applied == {2}


def test_a_move_to_a_node_whose_cpus_all_went_offline_since_the_pass_began_is_refused(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    k.take_offline(2, 3)
    assert act.move_task(100, 5000, 101, 1) == "refused: node has no online CPUs"
    assert k.calls == [] and act.state.affinities == {}
    assert act.counters["task_moves_refused_no_cpus"] == 1


def test_a_thread_free_on_every_online_cpu_gets_every_cpu_back_once_offline_ones_return(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    k.take_offline(3)
    act.move_task(100, 5000, 101, 0)
    assert act.state.affinities[ThreadKey(100, 5000, 101)].original == {0, 1, 2, 3}
    k.bring_online(3)
    assert act.restore() == 1
    assert k.get_affinity(101) == {0, 1, 2, 3}


def test_a_narrowed_thread_keeps_its_own_original(tmp_path):
    k = FakeKernel()
    k.affinity[101] = frozenset({1, 2})  # its user's (placed anyway under respect.user_affinity = false)
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    assert act.state.affinities[ThreadKey(100, 5000, 101)].original == {1, 2}


def test_a_refused_move_keeps_the_record_of_the_affinity_set_before(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    k.refuse_next_set = OSError(errno.EINVAL, "Invalid argument")
    assert act.move_task(100, 5000, 101, 0) == "failed: Invalid argument"
    record = StateFile(str(tmp_path / "state.json")).load().affinities[ThreadKey(100, 5000, 101)]
    assert record.original == {0, 1, 2, 3} and record.applied == {2, 3} == k.affinity[101]
    assert act.restore() == 1 and k.affinity[101] == {0, 1, 2, 3}


def test_our_affinity_is_still_ours_with_some_of_its_cpus_offline(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    k.take_offline(3)
    assert act.forget_broken_affinities() == []
    assert act.restore() == 1
    assert k.affinity[101] == {0, 1, 2, 3}


def test_an_affinity_the_kernel_reset_when_all_its_cpus_went_offline_is_no_longer_ours(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    act.move_task(100, 5000, 102, 1)
    k.take_offline(2, 3, asleep={102})
    assert k.get_affinity(102) == frozenset()  # not run since: the kernel resets it when it wakes
    key = ThreadKey(100, 5000, 101)
    broken = act.forget_broken_affinities()
    assert [(b[0], b[1].applied, b[2]) for b in broken] == [(key, {2, 3}, {0, 1})]
    assert act.counters["affinities_reset_by_kernel"] == 1
    saved = StateFile(str(tmp_path / "state.json")).load().affinities
    assert list(saved) == [ThreadKey(100, 5000, 102)]
    k.bring_online(2, 3)
    assert act.forget_broken_affinities() == []
    assert act.restore() == 1 and k.affinity[102] == {0, 1, 2, 3}
    assert act.counters["restore_skipped_changed_by_others"] == 0


def test_the_record_of_an_exited_thread_whose_cpus_went_offline_is_dropped(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    del k.affinity[101]  # the thread exited, its process lives on
    k.take_offline(2, 3)
    assert act.forget_broken_affinities() == []
    assert act.state.affinities == {} and act.counters["affinities_reset_by_kernel"] == 0


def test_a_thread_created_by_a_pinned_thread_inherits_the_pin_and_is_adopted_with_its_original(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1, "app")
    k.affinity[103] = k.affinity[101]  # created by 101 after the move: the kernel copies its mask
    found = act.adopt_inherited(ThreadKey(100, 5000, 103), frozenset({2, 3}), "app", [(100, 5000)], 0)
    assert found is not None and found[0] == 100
    rec = StateFile(str(tmp_path / "state.json")).load().affinities[ThreadKey(100, 5000, 103)]
    assert rec.original == {0, 1, 2, 3} and rec.applied == {2, 3}
    assert act.counters["inherited_pins_adopted"] == 1
    assert act.restore() == 2 and k.affinity[103] == {0, 1, 2, 3}


def test_a_child_forked_by_a_pinned_process_is_adopted_even_after_the_parents_pin_was_restored(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1, "launcher")
    k.affinity[201] = k.affinity[101]  # forked by 101 while pinned
    k.start[200] = 6000
    assert act.restore_process(100, 5000) == 1  # the launcher left autonumad's care
    found = act.adopt_inherited(ThreadKey(200, 6000, 201), frozenset({2, 3}), "job", [(200, 6000), (100, 5000)],
                                6000)
    assert found is not None and found[0] == 100
    assert act.restore() == 1 and k.affinity[201] == {0, 1, 2, 3}


def test_a_pin_that_is_none_of_ours_is_not_adopted(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    k.start[200] = 6000
    k.affinity[201] = frozenset({1})
    assert act.adopt_inherited(ThreadKey(200, 6000, 201), frozenset({1}), "job", [(200, 6000), (100, 5000)],
                               6000) is None
    assert act.adopt_inherited(ThreadKey(200, 6000, 201), frozenset({2, 3}), "job", [(200, 6000)], 6000) is None
    assert act.adopt_inherited(ThreadKey(200, 6000, 201), frozenset(), "job", [(100, 5000)], 6000) is None
    assert ThreadKey(200, 6000, 201) not in act.state.affinities


def test_the_pins_remembered_for_an_exited_process_are_dropped_and_a_restart_remembers_the_recorded_ones(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    act.move_task(100, 5000, 101, 1)
    fresh = Actuator(k, lambda n: NODE_CPUS[n], StateFile(str(tmp_path / "state.json")).load(),
                     StateFile(str(tmp_path / "state.json")), MigrationRateLimit(10, 100))
    assert fresh.lineage == {(100, 5000): {frozenset({2, 3}): (frozenset({0, 1, 2, 3}), 0)}}
    act.prune_lineage()
    assert (100, 5000) in act.lineage
    k.start[100] = 7000  # exited, PID reused
    act.prune_lineage()
    assert act.lineage == {}


def test_a_pin_a_thread_had_before_ours_was_set_is_never_taken_for_inherited(tmp_path):
    k = FakeKernel()
    ticks = [1000]
    act = Actuator(k, lambda n: NODE_CPUS[n], DaemonState(), StateFile(str(tmp_path / "state.json")),
                   MigrationRateLimit(10, 100), boot_ticks=lambda: ticks[0])
    k.affinity[103] = frozenset({2, 3})  # the program pinned its worker itself, at tick 900
    act.move_task(100, 5000, 101, 1)     # then autonumad pinned the main thread there, at tick 1000
    assert act.adopt_inherited(ThreadKey(100, 5000, 103), frozenset({2, 3}), "app", [(100, 5000)], 900) is None
    assert act.adopt_inherited(ThreadKey(100, 5000, 104), frozenset({2, 3}), "app", [(100, 5000)], 1000) is not None
    ticks[0] = 3000                      # a restarted daemon: only what starts from now on inherits
    fresh = Actuator(k, lambda n: NODE_CPUS[n], StateFile(str(tmp_path / "state.json")).load(),
                     StateFile(str(tmp_path / "state.json")), MigrationRateLimit(10, 100), boot_ticks=lambda: ticks[0])
    assert fresh.adopt_inherited(ThreadKey(100, 5000, 105), frozenset({2, 3}), "app", [(100, 5000)], 2000) is None
    assert fresh.adopt_inherited(ThreadKey(100, 5000, 105), frozenset({2, 3}), "app", [(100, 5000)], 3001) is not None


def test_a_thread_someone_pinned_since_the_pass_looked_is_left_alone_when_pins_are_respected(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    k.affinity[101] = frozenset({0})     # its program pinned it between the snapshot and the move
    assert act.move_task(100, 5000, 101, 1, respect_pins=True).startswith("skipped: someone else pinned it")
    assert k.affinity[101] == {0} and ThreadKey(100, 5000, 101) not in act.state.affinities
    assert act.move_task(100, 5000, 102, 1, respect_pins=True) == "done"
    k.affinity[102] = frozenset({1})     # and one we pinned, re-pinned by its program
    assert act.move_task(100, 5000, 102, 0, respect_pins=True).startswith("skipped")
    assert k.affinity[102] == {1}
