"""scripts/bench-balance's pure parts: the scenarios, locality over time, the static optimum, a
run's figures and the verdicts; and the script re-reading saved results (--from)."""

import json
import os
import subprocess
import sys

from autonumad.bench.balance import (
    SCENARIOS, buffer_node_pages, dips_after_goal, final_locality, locality_samples, mean_locality,
    run_metrics, scenario_optimum, static_optimum, thread_moves_since, time_to_goal, verdicts,
)
from autonumad.workload import parse_options

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "scripts", "bench-balance")
MIB = 1 << 20


def report(t, loc, pid=10, tid=11, proc=0, thread=0, node=0):
    return {"t": t, "pid": pid, "tid": tid, "proc": proc, "thread": thread, "node": node, "locality": loc}


def samples_of(*values):
    return [(float(t), v) for t, v in enumerate(values)]


# ---------------------------------------------------------------- scenarios


def test_scenarios_are_the_issues_five_and_the_workload_accepts_them():
    assert list(SCENARIOS) == ["S1", "S2", "S3", "S4", "S5"]
    shapes = {name: parse_options(list(s.workload_args)) for name, s in SCENARIOS.items()}
    assert [(o.shape, o.processes, o.threads, o.mb, o.affinity, o.start) for o in shapes.values()] == [
        ("numa01", 2, 1, 400, "free", "adversarial"),
        ("numa02", 1, 2, 256, "pinned", "adversarial"),
        ("numa01", 2, 1, 400, "free", "adversarial"),
        ("numa01", 4, 1, 200, "free", "adversarial"),
        ("numa01", 2, 2, 200, "free", "adversarial"),
    ]
    assert [s.nodes for s in SCENARIOS.values()] == [2, 2, 4, 4, 4]


def test_s5_distances_are_15_within_pairs_and_25_across():
    s5 = SCENARIOS["S5"]
    assert [[s5.distance(a, b) for b in range(4)] for a in range(4)] == [
        [10, 15, 25, 25], [15, 10, 25, 25], [25, 25, 10, 15], [25, 25, 15, 10]]
    assert SCENARIOS["S3"].distance(0, 3) == 20


# ---------------------------------------------------------------- locality over time


def test_locality_at_a_sample_time_is_the_mean_over_threads_and_a_late_report_counts_at_its_nearest_time():
    reports = [report(0.0, 0.0), report(0.02, 1.0, tid=12, thread=1),
               report(1.3, 0.5), report(0.9, 0.5, tid=12, thread=1)]
    assert locality_samples(reports, 1.0) == [(0.0, 0.5), (1.0, 0.5)]


def test_time_to_90_is_the_first_sample_at_or_above_it_and_none_when_never():
    assert time_to_goal(samples_of(0.0, 0.5, 0.9, 0.95)) == 2.0
    assert time_to_goal(samples_of(0.0, 0.5, 0.89)) is None


def test_a_dip_lasting_several_samples_counts_once_and_nothing_before_reaching_90_counts():
    assert dips_after_goal(samples_of(0.1, 0.5, 0.95, 0.8, 0.7, 0.95, 0.85, 0.99)) == 2
    assert dips_after_goal(samples_of(0.1, 0.5, 0.89, 0.3)) == 0


def test_mean_is_over_every_sample_and_final_over_the_last_five_seconds():
    samples = samples_of(*([0.0] * 10 + [1.0] * 10 + [0.5] * 6))  # times 0..25
    assert mean_locality(samples) == (10 + 3) / 26
    assert final_locality(samples, duration=25) == 0.5
    assert mean_locality([]) is None


def test_thread_moves_count_node_changes_in_the_last_half_only():
    reports = [report(0, 0, node=0), report(1, 0, node=1), report(5, 0, node=1), report(6, 0, node=0),
               report(7, 0, node=0), report(0, 0, tid=12, thread=1, node=1), report(8, 0, tid=12, thread=1, node=0)]
    assert thread_moves_since(reports, 5.0) == 2


# ---------------------------------------------------------------- placement


MAPS = """\
55d0c0000000-55d0c0021000 r--p 00000000 fe:01 123 /usr/bin/python3.11
7f0000000000-7f0019200000 rw-p 00000000 00:00 0
7f0019200000-7f0019600000 rw-p 00000000 00:00 0
"""
NUMA_MAPS = """\
55d0c0000000 default file=/usr/bin/python3.11 mapped=33 N0=33 kernelpagesize_kB=4
7f0000000000 default anon=102400 dirty=102400 N1=100000 N2=2400 kernelpagesize_kB=4
7f0019200000 default anon=1024 dirty=1024 N0=1024 kernelpagesize_kB=4
"""


def test_the_buffer_is_the_anonymous_mapping_one_huge_page_longer_than_it():
    assert buffer_node_pages(MAPS, NUMA_MAPS, 400 * MIB) == {1: 100000, 2: 2400}
    assert buffer_node_pages(MAPS, NUMA_MAPS, 300 * MIB) is None


def test_static_optimum_of_s5_is_half_with_each_process_on_a_near_pair_keeping_its_memory():
    s5 = SCENARIOS["S5"]
    best = static_optimum([2, 2], {n: 1 for n in range(4)}, s5.distance, memory_nodes=[1, 2])
    assert best.locality == 0.5
    assert best.placement == ((0, 1), (2, 3))
    assert best.spread == 30


def test_static_optimum_without_distances_or_stacking_limits():
    rotation = static_optimum([1, 1, 1, 1], {n: 1 for n in range(4)}, SCENARIOS["S4"].distance, [1, 2, 3, 0])
    assert rotation.locality == 1.0
    two_cpus = static_optimum([2, 2], {0: 2, 1: 2}, SCENARIOS["S1"].distance, [1, 0])
    assert two_cpus.locality == 1.0 and two_cpus.placement == ((1, 1), (0, 0))
    assert static_optimum([3], {0: 1, 1: 1}, SCENARIOS["S1"].distance, [0]) is None  # cannot avoid stacking


def test_scenario_optimum_reads_threads_and_memory_nodes_from_the_ready_object():
    ready = {"processes": [
        {"proc": 1, "home_nodes": [1, 1], "memory": [{"node": 2, "bytes": 200 * MIB, "on_node": 1.0}]},
        {"proc": 0, "home_nodes": [0, 0], "memory": [{"node": 1, "bytes": 200 * MIB, "on_node": 1.0}]}]}
    assert scenario_optimum(SCENARIOS["S5"], ready).placement == ((0, 1), (2, 3))


# ---------------------------------------------------------------- a run's figures and the verdicts


def snap(t, migrated, ticks=None, counters=None, ticks_after=None):
    return {"t": t, "vmstat": {"pgmigrate_success": migrated}, "cpu_ticks": ticks, "counters": counters,
            "cpu_ticks_after_status": ticks_after}


def record(scenario="S1", balancer="autonumad", duration=10, **extra):
    base = {
        "scenario": scenario, "balancer": balancer, "duration": duration, "interval": 1.0, "clk_tck": 100,
        "error": None,
        "ready": {"t0": 100.0, "pids": [10], "processes": [
            {"proc": 0, "pid": 10, "home_nodes": [0], "memory": [{"node": 1, "bytes": 400 * MIB, "on_node": 1.0}]}]},
        "snapshots": {"launch": snap(70.0, 0, 50, {"task_moves": 0}), "t0": snap(100.1, 5, 60),
                      "mid": snap(105.1, 105, 80, {"task_moves": 1, "exchanges": 0, "pages_migrated": 100}, 85),
                      "end": snap(110.1, 105, 100, {"task_moves": 1, "exchanges": 0, "pages_migrated": 100})},
        "placement": {"10": {"maps": MAPS, "numa_maps": NUMA_MAPS}},
    }
    base.update(extra)
    return base


def run_lines(localities, node=1):
    return [{"ready": {}}, *(report(float(t), loc, node=node) for t, loc in enumerate(localities)),
            {"summary": {"proc": 0}}]


def test_run_metrics_from_a_record_and_its_lines_leaving_out_what_our_status_request_cost():
    m = run_metrics(record(), run_lines([0.0] + [1.0] * 10))
    assert (m.time_to_goal_s, m.final, m.dips) == (1.0, 1.0, 0)
    assert m.pages_migrated == 100 and m.pages_migrated_before_t0 == 5 and m.pages_migrated_last_half == 0
    assert m.cpu_s == 0.35 and round(m.wall_s, 6) == 10.0 and round(m.cpu_share, 6) == 0.035
    assert m.daemon_last_half == {"task_moves": 0, "exchanges": 0, "pages_migrated": 0}
    assert m.final_nodes == {0: [1]}
    assert m.stray_pages == {0: (2400, 102400)}


def metrics_for(scenario, kernel_lines, ours_lines, kernel_record=None, ours_record=None):
    kernel = run_metrics(kernel_record or record(scenario, "kernel"), kernel_lines)
    ours = run_metrics(ours_record or record(scenario), ours_lines)
    return {(scenario, "kernel"): kernel, (scenario, "autonumad"): ours}


def by_target(items):
    return {v.target: v for v in items}


def test_verdicts_for_s1_compare_with_the_kernel_run():
    kernel_record = record("S1", "kernel")
    kernel_record["snapshots"]["end"]["vmstat"]["pgmigrate_success"] = 200_005
    runs = metrics_for("S1", run_lines([0.0, 0.95, 0.8, 0.95] + [0.9] * 7), run_lines([0.0] + [1.0] * 10),
                       kernel_record=kernel_record)
    v = by_target(verdicts([SCENARIOS["S1"]], runs, {}))
    assert v["S1 final locality >= 0.98"].met
    assert v["S1 no dip below 90% after first reaching it"].met
    assert v["S1 mean locality above kernel's"].met
    assert v["S1 pages migrated < 10% of kernel's"].met
    assert v["S1 pages migrated < 10% of kernel's"].figure == "100 vs 200000 (0.1%)"
    assert v["S1 autonumad CPU < 5% of wall"].met


def test_the_cpu_verdict_names_the_part_spent_moving_pages_from_the_daemons_counter():
    ours = record("S1")
    ours["snapshots"]["launch"]["counters"]["move_cpu_ms"] = 40
    ours["snapshots"]["end"]["counters"]["move_cpu_ms"] = 290
    runs = metrics_for("S1", run_lines([0.0] + [1.0] * 10), run_lines([0.0] + [1.0] * 10), ours_record=ours)
    assert runs[("S1", "autonumad")].move_cpu_s == 0.25
    v = by_target(verdicts([SCENARIOS["S1"]], runs, {}))
    assert v["S1 autonumad CPU < 5% of wall"].figure == "0.35 s of 10.0 s (3.5%); 0.25 s of it moving pages, the rest 1.0%"
    assert runs[("S1", "kernel")].move_cpu_s is None  # no such counter: the figure says nothing of it


def test_verdicts_say_not_met_and_na_plainly():
    runs = metrics_for("S1", run_lines([0.0] * 11), run_lines([0.0, 0.95, 0.5] + [0.97] * 8))
    del runs[("S1", "kernel")]
    v = by_target(verdicts([SCENARIOS["S1"]], runs, {}))
    assert v["S1 final locality >= 0.98"].word == "NOT met"
    assert v["S1 no dip below 90% after first reaching it"].figure == "1 dip"
    assert v["S1 mean above kernel's; pages < 10% of kernel's"].word == "n/a"
    none = verdicts([SCENARIOS["S3"]], {}, {})
    assert [(x.target, x.word) for x in none] == [("S3 autonumad targets", "n/a")]


def test_s2_time_to_90_is_judged_against_one_and_a_half_times_the_kernels():
    fast_kernel = run_lines([0.0, 0.5, 0.9] + [1.0] * 8)
    target = "S2 time to 90% within 1.5x kernel's"

    def judged(ours_lines):
        return by_target(verdicts([SCENARIOS["S2"]], metrics_for("S2", fast_kernel, ours_lines), {}))[target]

    assert judged(run_lines([0, 0.5, 0.8, 0.95] + [1.0] * 7)).met
    slow = judged(run_lines([0, 0, 0, 0.5, 0.95] + [1.0] * 6))
    assert not slow.met and slow.figure == "4 s vs 2 s (2.00x)"
    never = judged(run_lines([0.0] * 11))
    assert not never.met and never.figure == "never vs 2 s"


def test_s5_verdicts_check_the_bound_the_placement_the_stray_pages_and_steadiness():
    ready = {"t0": 0, "pids": [10, 20], "processes": [
        {"proc": 0, "pid": 10, "home_nodes": [0, 0], "memory": [{"node": 1, "bytes": 400 * MIB, "on_node": 1.0}]},
        {"proc": 1, "pid": 20, "home_nodes": [1, 1], "memory": [{"node": 2, "bytes": 200 * MIB, "on_node": 1.0}]}]}
    rec = record("S5", ready=ready)
    lines = [report(float(t), 1.0 if thread == 0 else 0.0, pid=10 * (proc + 1), tid=proc * 2 + thread, proc=proc,
                    thread=thread, node=[[1, 0], [2, 3]][proc][thread])
             for t in range(11) for proc in (0, 1) for thread in (0, 1)]
    ours = run_metrics(rec, lines)
    optimum = scenario_optimum(SCENARIOS["S5"], ready)
    v = by_target(verdicts([SCENARIOS["S5"]], {("S5", "autonumad"): ours}, {"S5": optimum}))
    assert v["S5 final locality no worse than the static optimum 0.50 (within 0.02)"].met
    assert v["S5 one thread per CPU, each process on its nearest nodes"].met
    stray = v["S5 no buffer pages on a node where none of its process's threads run"]
    assert not stray.met and stray.figure == "2400 of 102400 pages"  # process 0's buffer has pages on node 2
    assert v["S5 steady: no task or page moves in the last half"].met


# ---------------------------------------------------------------- the script


def test_from_prints_the_table_and_targets_of_saved_results(tmp_path):
    for balancer, lines in (("kernel", run_lines([0.0, 0.95, 0.8] + [0.95] * 8)),
                            ("autonumad", run_lines([0.0] + [1.0] * 10))):
        rundir = tmp_path / "S1" / balancer
        rundir.mkdir(parents=True)
        (rundir / "run.json").write_text(json.dumps(record("S1", balancer)))
        (rundir / "reports.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    done = subprocess.run([sys.executable, BENCH, "--from", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("scen "))
    assert out[head].split()[:9] == ["scen", "balancer", "to", "90%", "mean", "final", "dips", "pages", "migr."]
    assert out[head + 2].split()[:6] == ["S1", "kernel", "1", "s", "0.85", "0.95"]
    assert out[head + 3].split()[:6] == ["S1", "autonumad", "1", "s", "0.91", "1.00"]
    assert "S1 final locality >= 0.98" in done.stdout and "NOT met" in done.stdout  # pages: 100 vs 100
