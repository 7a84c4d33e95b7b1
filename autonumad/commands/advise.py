"""autonumactl advise CPUS[:MB]: the nodes a job of that size should be started on now (numad -w).

Asks the daemon when it runs. Otherwise (not running, or it refuses us for want of
root) the answer is computed here by the same rule (placement_advice.advise) from
the topology's free memory per node, less the config's node_reserve_mb, and the
CPUs left idle per node over SAMPLE_SECONDS of /proc/stat. It says which it did.

stdout is only the node list in numactl's syntax ("0-1", "2"), so that
`numactl --cpunodebind=$(autonumactl advise 4:2048) --membind=...` works; the
reason and where the answer came from go to stderr. The daemon takes whole CPUs: a
fractional CPUS ("0.5:256") is rounded up when asking it. `--json` prints
{"nodes": [...], "reason": "...", "source": "daemon"|"local", "note": "..."}.
"""

from __future__ import annotations

import argparse
import math
import sys

from autonumad import constants
from autonumad.commands.control_request import VerbFailed, add_json_argument, ask, fail, print_json
from autonumad.config import Config, ConfigError, load_config
from autonumad.kernel import cpu_load
from autonumad.kernel.files import KernelFiles
from autonumad.nodelist import format_list
from autonumad.placement_advice import Advice, advise, parse_job_size
from autonumad.topology import TopologyError, read_topology

# Daemon answers after which we compute the advice ourselves instead of failing.
FALLBACK_CODES = frozenset({"permission_denied", "unknown_command", "timeout"})


def job_size(text: str) -> tuple[float, int]:
    try:
        return parse_job_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("size", metavar="CPUS[:MB]", type=job_size,
                        help="the job: how many CPUs it keeps busy and, optionally, how many MB it uses "
                             "(e.g. 4 or 2:1024)")
    parser.add_argument("--local", action="store_true",
                        help="compute the advice here even when the daemon runs")
    add_json_argument(parser, "the advice, with where it came from,")


def run(args: argparse.Namespace) -> int:
    cpus, mb = args.size
    why_local = "--local"
    if not args.local:
        try:
            result = ask(args, "advise", {"cpus": max(1, math.ceil(cpus)), "memory_mb": mb})
            return report(args, Advice(tuple(result["nodes"]), result["reason"]), "daemon", "asked autonumad")
        except VerbFailed as exc:
            if exc.code is not None and exc.code not in FALLBACK_CODES:
                return fail(args.verb, exc)
            why_local = exc.message
    try:
        advice, how = advise_locally(KernelFiles(args.root), cpus, mb)
    except TopologyError as exc:
        return fail(args.verb, VerbFailed(str(exc)))
    return report(args, advice, "local", f"computed here ({why_local}): {how}")


def local_reserve_mb() -> int:
    """The daemon's node_reserve_mb from the config file, or its default."""
    try:
        return load_config(constants.CONFIG_PATH).migrate.node_reserve_mb
    except ConfigError:
        return Config().migrate.node_reserve_mb


def advise_locally(files: KernelFiles, cpus: float, mb: int,
                   seconds: float = cpu_load.SAMPLE_SECONDS) -> tuple[Advice, str]:
    """The advice from this machine's state now, and how it was measured."""
    topology = read_topology(files)
    reserve = local_reserve_mb()
    how = f"free memory from sysfs less a {reserve} MB reserve per node"
    try:
        idle = cpu_load.measure_idle_shares(files, seconds)
    except (OSError, ValueError) as exc:
        idle_cpus: dict[int, float] = {}
        how += f"; CPU load unknown ({getattr(exc, 'strerror', None) or exc}): every CPU counted idle"
    else:
        idle_cpus = {nid: sum(idle.get(cpu, 0.0) for cpu in node.cpus) for nid, node in topology.nodes.items()}
        how += f", idle CPUs measured over {seconds:g} s"
    return advise(topology, cpus, mb, idle_cpus, reserve_mb=reserve), how


def report(args: argparse.Namespace, advice: Advice, source: str, note: str) -> int:
    if args.json:
        print_json({**advice.to_json(), "source": source, "note": note})
    else:
        print(format_list(advice.nodes))
        print(f"autonumactl advise: {advice.reason} [{note}]", file=sys.stderr)
    return 0
