import errno

from autonumad.actuator import Actuator, MigrationRateLimit, page_status_counts
from autonumad.kernel.files import ProcessGone
from autonumad.state_file import DaemonState, StateFile, ThreadKey

NODE_CPUS = {0: frozenset({0, 1}), 1: frozenset({2, 3}), 2: frozenset()}


class FakeKernel:
    def __init__(self):
        self.affinity = {101: frozenset({0, 1, 2, 3}), 102: frozenset({0, 1, 2, 3})}
        self.start = {100: 5000}
        self.start_after_call = None
        self.page_nodes = {}
        self.calls = []

    def get_affinity(self, tid):
        if tid not in self.affinity:
            raise ProcessGone(errno.ESRCH, "gone")
        return self.affinity[tid]

    def set_affinity(self, tid, cpus):
        self.calls.append(("set_affinity", tid, frozenset(cpus)))
        if tid not in self.affinity:
            raise ProcessGone(errno.ESRCH, "gone")
        self.affinity[tid] = frozenset(cpus)
        if self.start_after_call is not None:
            self.start[100] = self.start_after_call

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


def test_migrate_pages_counts_statuses_by_kind(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k)
    result, moved = act.migrate_pages(100, 5000, [0x1000, 0x2000, 0xBAD000], 0, 1)
    assert result == "done" and moved == 2
    assert page_status_counts(act.counters) == {"EBUSY": 1}
    assert act.counters["pages_migrated"] == 2


def test_migration_rate_limit_defers_and_refills():
    now = [0.0]
    rl = MigrationRateLimit(100, 1000, clock=lambda: now[0])
    assert rl.take(150) == 100
    assert rl.take(10) == 0
    now[0] = 0.5
    assert rl.take(100) == 50
    assert abs(rl.mb_per_second() - 100 * 4096 / (1 << 20)) < 1e-9


def test_migrate_pages_takes_only_the_grant(tmp_path):
    k = FakeKernel()
    act = make(tmp_path, k, pages=2)
    result, moved = act.migrate_pages(100, 5000, [0x1000, 0x2000, 0x3000], 0, 1)
    assert moved == 2 and "1 left for later" in result


def test_pid_reused_during_migration_moves_pages_back(tmp_path):
    k = FakeKernel()
    k.start_after_call = 1
    act = make(tmp_path, k)
    result, moved = act.migrate_pages(100, 5000, [0x1000], 0, 1)
    assert result.startswith("undone") and moved == 0
    assert k.page_nodes[0x1000] == 0
