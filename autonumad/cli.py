"""autonumactl: the command-line front end (read-only views and, through the daemon, control).

Each verb lives in autonumad/commands/<verb>.py with `add_arguments(parser)` and
`run(args) -> int`; this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module under autonumad.commands, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "topology": ("topology", "show NUMA nodes, CPUs, memory and distances (like numactl -H)"),
    "show": ("show", "show a process's memory per node (like numastat -p) and where its threads run"),
    "top": ("top", "processes ranked by remote memory, per node, refreshed live (like top)"),
    "status": ("status", "is the daemon balancing, and why not; nodes, managed processes, counters"),
    "stats": ("stats", "the daemon's scanner and migration counters (AutoNUMA-style)"),
    "get": ("knob_get", "print runtime knobs (AutoNUMA's pacing knobs) from the daemon"),
    "set": ("knob_set", "change a runtime knob in the daemon until the next reload (root)"),
    "enable": ("switch", "resume balancing (root)"),
    "disable": ("switch", "stop balancing and restore the affinities the daemon set (root)"),
    "reload": ("reload", "make the daemon re-read its config file; a bad file is refused (root)"),
    "advise": ("advise", "nodes a job of CPUS[:MB] should be started on now (like numad -w)"),
    "completion": ("completion", "print a bash or zsh completion script"),
    "service": ("service", "install or uninstall the systemd unit and example config (root)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autonumactl", description="Inspect and control autonumad.")
    parser.add_argument("--root", default="/", help=argparse.SUPPRESS)
    parser.add_argument("--socket", metavar="PATH",
                        help="the daemon's control socket (default: daemon.control_socket in "
                             "/etc/autonumad.conf, else /run/autonumad/control.sock)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(f"autonumad.commands.{module_name}")
        p = sub.add_parser(verb, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
