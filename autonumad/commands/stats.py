"""autonumactl stats: the daemon's counters, AutoNUMA-style (pages scanned, full scans, pages migrated...).

Sections as the daemon sends them (scanner, migrated, fault_sampler, knobs), one
counter a line; nested tables are indented under their name. Needs the daemon:
without it, a plain message and exit 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from autonumad.commands.control_request import add_json_argument, answer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_argument(parser, "the daemon's counters")


def run(args: argparse.Namespace) -> int:
    return answer(args, "stats", None, format_stats)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value) or "-"
    return str(value)


def format_tree(tree: Mapping[str, Any], indent: int = 0) -> list[str]:
    """name value lines, values aligned within each table, sub-tables indented under their name."""
    width = max((len(k) for k, v in tree.items() if not isinstance(v, Mapping)), default=0)
    lines = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            lines.append(" " * indent + f"{key}:")
            lines.extend(format_tree(value, indent + 2) if value else [" " * (indent + 2) + "(none)"])
        else:
            lines.append(" " * indent + f"{key.ljust(width)}  {format_value(value)}")
    return lines


def format_stats(stats: Mapping[str, Any]) -> str:
    return "\n".join(format_tree(stats)) + "\n"
