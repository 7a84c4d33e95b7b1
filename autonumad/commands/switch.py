"""autonumactl enable | disable: turn balancing on or off in the running daemon (root only).

One module serves both verbs (the verb name is the request). `disable` stops
scanning and migration, drops per-process state and restores the CPU affinities
the daemon set; the daemon keeps running and answering. `enable` resumes, unless
something else keeps balancing off (a single-node machine, say), which it reports.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from autonumad.commands.control_request import add_json_argument, answer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_argument(parser, "the daemon's reply")


def run(args: argparse.Namespace) -> int:
    return answer(args, args.verb, None, format_switch)


def format_switch(result: Mapping[str, Any]) -> str:
    if result.get("balancing"):
        text = "balancing is on"
    else:
        reason = result.get("off_reason")
        text = "balancing is off" + (f" ({reason})" if reason else "")
    restored = result.get("restored_affinities") or 0
    if restored:
        text += f"; restored the CPU affinity of {restored} thread{'s' if restored != 1 else ''}"
    return text + "\n"
