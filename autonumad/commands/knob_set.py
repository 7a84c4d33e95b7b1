"""autonumactl set KNOB VALUE: change a runtime knob in the running daemon (root only).

The value is checked here first, by the same rule the config file uses
(`Config.with_knob`), so a bad one is refused with the knob and its allowed range
named before anything is sent. The change lasts until the next reload or restart:
the config file is not touched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from autonumad.commands.control_request import add_json_argument, answer
from autonumad.config import RUNTIME_KNOBS, Config, ConfigError

EXIT_BAD_VALUE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("knob", metavar="KNOB", choices=list(RUNTIME_KNOBS),
                        help="one of: " + ", ".join(RUNTIME_KNOBS))
    parser.add_argument("value", metavar="VALUE", help="the new value (an integer in the knob's range)")
    add_json_argument(parser, "the daemon's reply")


def run(args: argparse.Namespace) -> int:
    try:
        value = Config().with_knob(args.knob, args.value).knob(args.knob)
    except ConfigError as exc:
        knob = RUNTIME_KNOBS[args.knob]
        print(f"autonumactl set: {exc} (allowed: {knob.minimum} to {knob.maximum}; "
              f"default {knob.default})", file=sys.stderr)
        return EXIT_BAD_VALUE
    return answer(args, "set", {"knob": args.knob, "value": value}, format_change)


def format_change(result: Mapping[str, Any]) -> str:
    return (f"{result.get('knob')} = {result.get('value')} (was {result.get('previous')}; "
            f"not saved in the config file: a reload or restart restores its value)\n")
