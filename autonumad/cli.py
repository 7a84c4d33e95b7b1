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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autonumactl", description="Inspect and control autonumad.")
    parser.add_argument("--root", default="/", help=argparse.SUPPRESS)
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
