"""Parse and format the kernel's list syntax for CPUs and nodes ("0-3,8,10-11").

Also accepts `all` (with the set of valid ids given), as numactl and migratepages do.
"""

from __future__ import annotations

from collections.abc import Iterable


def parse_list(text: str, all_ids: Iterable[int] | None = None) -> list[int]:
    """Parse "0-3,8" into [0, 1, 2, 3, 8]; raise ValueError naming the bad part."""
    text = text.strip()
    if text == "":
        return []
    if text == "all":
        if all_ids is None:
            raise ValueError("'all' is not allowed here")
        return sorted(set(all_ids))
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise ValueError(f"bad list element {part!r} in {text!r} (expected N or N-M)") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"bad range {part!r} in {text!r}")
        ids.update(range(lo, hi + 1))
    return sorted(ids)


def format_list(ids: Iterable[int]) -> str:
    """Format [0, 1, 2, 3, 8] as "0-3,8"."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(set(ids)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def format_cpus(cpus: Iterable[int]) -> str:
    """"CPU 3" or "CPUs 1-3", for messages."""
    ids = sorted(set(cpus))
    return f"CPU{'s' if len(ids) > 1 else ''} {format_list(ids)}"
