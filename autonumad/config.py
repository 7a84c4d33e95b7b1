"""The configuration: /etc/autonumad.conf (TOML), validated as a whole before any of it is used.

It feeds every box of the flow (scanner pacing, policy thresholds, actuator limits)
and decides nothing itself. One schema drives parsing, validation, defaults, the
runtime knobs and the documentation: each section is a frozen dataclass whose
fields carry a `Setting` (its kind, range and description) in their metadata. The
shipped example, systemd/autonumad.conf, is `render_example()` (regenerate it with
`python -m autonumad.config --example > systemd/autonumad.conf`).

A file is either valid as a whole or refused with `ConfigError`, whose message has
one `file:line: section.key: problem` line per problem; nothing is half-applied.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from autonumad import constants

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1 << 20
MAX_PAGES = 1 << 31
MAX_MILLISECS = 3_600_000
PID_MAX_LIMIT = 1 << 22


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where, which key, what."""

    source: str | None
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.source or ""
        if self.source and self.line is not None:
            where = f"{self.source}:{self.line}"
        parts = [p for p in (where, self.key, self.message) if p]
        return ": ".join(parts)


class ConfigError(ValueError):
    """A config (file, text or runtime knob value) was refused; `problems` lists why."""

    def __init__(self, problems: list[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# ---------------------------------------------------------------- kinds of value
# Each kind checks a value as tomllib returns it (raising ValueError with the
# problem in words), describes what it accepts, and renders a value as TOML.

def toml_string(text: str) -> str:
    """`text` as a TOML basic string."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch != "\t" and (ord(ch) < 0x20 or ord(ch) == 0x7F):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _show(value: Any) -> str:
    """A value as it appears in a message, cut short if long."""
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


class Kind:
    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def render(self, value: Any) -> str:
        raise NotImplementedError


class Bool(Kind):
    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {_type_name(value)}")
        return value

    def describe(self) -> str:
        return "true or false"

    def render(self, value: bool) -> str:
        return "true" if value else "false"


@dataclass(frozen=True)
class Int(Kind):
    minimum: int
    maximum: int

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, not {_type_name(value)}")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be from {self.minimum} to {self.maximum}, got {_show(value)}")
        return value

    def describe(self) -> str:
        return f"an integer from {self.minimum} to {self.maximum}"

    def render(self, value: int) -> str:
        return str(value)


@dataclass(frozen=True)
class Float(Kind):
    minimum: float
    maximum: float

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, not {_type_name(value)}")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be from {self.minimum:g} to {self.maximum:g}, got {_show(value)}")
        return float(value)

    def describe(self) -> str:
        return f"a number from {self.minimum:g} to {self.maximum:g}"

    def render(self, value: float) -> str:
        return repr(float(value))


@dataclass(frozen=True)
class Choice(Kind):
    options: tuple[str, ...]

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {_type_name(value)}")
        if value not in self.options:
            raise ValueError(f"must be one of {self.describe_options()}, got {toml_string(value)}")
        return value

    def describe_options(self) -> str:
        return ", ".join(toml_string(o) for o in self.options)

    def describe(self) -> str:
        return f"one of {self.describe_options()}"

    def render(self, value: str) -> str:
        return toml_string(value)


class _Text(Kind):
    """A string with a per-kind rule; subclasses give `rule(text)` -> problem or None."""

    what = "a string"

    def rule(self, text: str) -> str | None:
        raise NotImplementedError

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be {self.what}, not {_type_name(value)}")
        problem = self.rule(value)
        if problem:
            raise ValueError(problem)
        return value

    def describe(self) -> str:
        return self.what

    def render(self, value: str) -> str:
        return toml_string(value)


def _plain_text_problem(text: str) -> str | None:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return "must not contain control characters"
    return None


class Path(_Text):
    def __init__(self, optional: bool):
        self.optional = optional
        self.what = "an absolute path, or \"\" for none" if optional else "an absolute path"

    def rule(self, text: str) -> str | None:
        if text == "" and self.optional:
            return None
        if not text.startswith("/"):
            return f"must be an absolute path, got {toml_string(text)}"
        if text.endswith("/"):
            return f"must name a file, not a directory, got {toml_string(text)}"
        return _plain_text_problem(text)


class GroupName(_Text):
    what = "a group name or number, or \"\" for none"
    _NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?|[0-9]+")

    def rule(self, text: str) -> str | None:
        if text == "" or (self._NAME.fullmatch(text) and len(text) <= 256):
            return None
        return f"is not a valid group name: {toml_string(text)}"


def _pattern_problem(text: str, what: str) -> str | None:
    if text == "":
        return f"an empty {what} pattern matches nothing"
    problem = _plain_text_problem(text)
    if problem:
        return problem
    if text.startswith("re:"):
        try:
            re.compile(text[3:])
        except (re.error, RecursionError, OverflowError) as exc:
            return f"bad regular expression {toml_string(text)}: {exc}"
    return None


@dataclass(frozen=True)
class ListOf(Kind):
    """An array whose items share one rule (`item_problem(item)` -> problem or None)."""

    item_what: str
    item_problem: Callable[[Any], str | None]

    def check(self, value: Any) -> tuple:
        if not isinstance(value, list):
            raise ValueError(f"must be an array of {self.item_what}, not {_type_name(value)}")
        for index, item in enumerate(value):
            problem = self.item_problem(item)
            if problem:
                raise ValueError(f"item {index + 1}: {problem}")
        return tuple(value)

    def describe(self) -> str:
        return f"an array of {self.item_what}"

    def render(self, value: tuple) -> str:
        return "[" + ", ".join(toml_string(v) if isinstance(v, str) else str(v) for v in value) + "]"


def _command_pattern_problem(item: Any) -> str | None:
    if not isinstance(item, str):
        return f"must be a string, not {_type_name(item)}"
    return _pattern_problem(item, "command-name")


def _cgroup_pattern_problem(item: Any) -> str | None:
    if not isinstance(item, str):
        return f"must be a string, not {_type_name(item)}"
    if not item.startswith(("/", "re:")):
        return f"a cgroup pattern starts with \"/\" (or is \"re:REGEX\"), got {toml_string(item)}"
    return _pattern_problem(item, "cgroup")


def _pid_problem(item: Any) -> str | None:
    if isinstance(item, bool) or not isinstance(item, int):
        return f"must be an integer, not {_type_name(item)}"
    if not 1 <= item <= PID_MAX_LIMIT:
        return f"must be a PID from 1 to {PID_MAX_LIMIT}, got {_show(item)}"
    return None


_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")


def _user_problem(item: Any) -> str | None:
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        return f"must be a user name or a numeric uid, not {_type_name(item)}"
    if isinstance(item, int):
        return None if 0 <= item < (1 << 32) - 1 else f"uid out of range: {_show(item)}"
    if not (_USER_NAME.fullmatch(item) and len(item) <= 256):
        return f"is not a valid user name: {toml_string(item)}"
    return None


# ---------------------------------------------------------------- the schema

@dataclass(frozen=True)
class Setting:
    kind: Kind
    doc: str
    runtime: bool = False


def setting(default: Any, kind: Kind, doc: str, runtime: bool = False) -> Any:
    """A dataclass field carrying its schema entry."""
    return field(default=default, metadata={"setting": Setting(kind, doc, runtime)})


MILLIS = Int(1, MAX_MILLISECS)
PAGES = Int(1, MAX_PAGES)


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon itself."""

    enabled: bool = setting(True, Bool(), (
        "Whether to balance at all. false: the daemon runs and answers status but scans and moves "
        "nothing (like AutoNUMA's /sys/kernel/mm/autonuma/enabled). `autonumactl "
        "disable` does the same at runtime; `noautonuma` on the kernel command line "
        "stops the daemon from starting."))
    log_level: str = setting("info", Choice(("debug", "info", "warning", "error")), (
        "Least important messages logged."))
    control_group: str = setting("", GroupName(), (
        "Group whose members may use the control socket's read-only requests (status, "
        "stats, show, get, config, advise); the socket is then owned root:GROUP with "
        "mode 0660. Empty: root only (mode 0600). Changes (set, enable, disable, reload) "
        "are always for root only."))
    state_file: str = setting(constants.STATE_FILE_PATH, Path(optional=False), (
        "Record of what the daemon changed (thread affinities, kernel.numa_balancing), "
        "so that a restarted daemon still restores the originals."))
    control_socket: str = setting(constants.CONTROL_SOCKET_PATH, Path(optional=False), (
        "The control socket autonumactl talks to."))


@dataclass(frozen=True)
class ScanConfig:
    """Scanning: how fast the daemon learns where memory is and where threads run."""

    scan_sleep_millisecs: int = setting(100, MILLIS, (
        "Pause between two batches of the scan (AutoNUMA's "
        "knuma_scand/scan_sleep_millisecs). Runtime knob."), runtime=True)
    scan_sleep_pass_millisecs: int = setting(10000, MILLIS, (
        "Pause between two full passes over all processes (AutoNUMA's "
        "knuma_scand/scan_sleep_pass_millisecs). Runtime knob."), runtime=True)
    scan_sleep_pass_max_millisecs: int = setting(60000, MILLIS, (
        "Once the system has settled, the pause between passes doubles at each pass that "
        "finds nothing to do, from scan_sleep_pass_millisecs up to this (as the kernel's "
        "numa_balancing_scan_period_max_ms); a pass that acts, or a new process, brings it "
        "back. Never below scan_sleep_pass_millisecs. Runtime knob."), runtime=True)
    pages_to_scan: int = setting(32768, PAGES, (
        "Pages whose node is sampled in one batch (AutoNUMA's "
        "knuma_scand/pages_to_scan). Runtime knob."), runtime=True)
    cpu_ceiling_percent: float = setting(5.0, Float(0.1, 100.0), (
        "Ceiling on the daemon's own CPU use, in percent of one CPU, page moves aside; "
        "the scanner lengthens its pauses to stay under it. A daemon that was quiet may "
        "spend 30 s worth of it at once, so over any stretch of time it stays under "
        "this share of (that stretch + 30 s)."))
    sample_stride_pages: int = setting(0, Int(0, MAX_PAGES), (
        "Sample one page in every N of a mapping (raised to the next N sharing no "
        "factor with 2..nodes, so interleaved memory is sampled evenly). 0: adaptive, "
        "about 4096 samples per process and a pass within pages_to_scan."))
    fault_sampling: bool = setting(True, Bool(), (
        "Attribute writes to threads (soft-dirty bits, and perf memory sampling where "
        "the CPU has a PMU). false: place by page location and thread CPU only."))


@dataclass(frozen=True)
class MigrateConfig:
    """Migration: how fast memory is moved, and where it must not go."""

    migrate_sleep_millisecs: int = setting(100, MILLIS, (
        "Pause between two migration batches (AutoNUMA's "
        "knuma_migrated/migrate_sleep_millisecs). Runtime knob."), runtime=True)
    pages_to_migrate: int = setting(32768, PAGES, (
        "Pages moved in one batch to one destination node (AutoNUMA's "
        "knuma_migrated/pages_to_migrate). Runtime knob."), runtime=True)
    node_reserve_mb: int = setting(256, Int(0, MAX_PAGES), (
        "Never migrate into a node with less free memory than this many MiB; the "
        "pages go to the next nearest node instead."))
    node_reserve_percent: float = setting(0.0, Float(0.0, 50.0), (
        "The same reserve as a percentage of the node's size; the larger of the two "
        "reserves applies."))


@dataclass(frozen=True)
class PolicyConfig:
    """Policy: which processes are worth balancing and what balancing aims at."""

    settle_seconds: int = setting(10, Int(0, 86400), (
        "A task or process the daemon has just moved is left alone this long."))
    min_rss_mb: int = setting(64, Int(0, MAX_PAGES), (
        "Processes with a smaller resident set are not balanced."))
    min_cpu_percent: float = setting(5.0, Float(0.0, 100000.0), (
        "Processes using less CPU than this (percent of one CPU, over a pass) are not "
        "balanced."))
    locality_target: float = setting(0.9, Float(0.0, 1.0), (
        "Stop moving a process's memory once this fraction of it is on the nodes its "
        "threads run on (numad -m 90 is 0.9)."))
    cpu_follows_memory: bool = setting(True, Bool(), (
        "Move threads (CPU affinity) towards the node holding their memory, "
        "exchanging them with threads that gain from going the other way."))
    memory_follows_cpu: bool = setting(True, Bool(), (
        "Move pages towards the node whose CPUs use them (after two consecutive "
        "observations from the same remote node)."))


@dataclass(frozen=True)
class ProcessesConfig:
    """Which processes to manage. A process is managed when it matches no exclude rule
    and either every include list is empty or it matches at least one include rule;
    it must still pass [policy] min_rss_mb and min_cpu_percent. Name and cgroup
    patterns are shell globs, or "re:REGEX" for a regular expression matched in full."""

    include: tuple[str, ...] = setting((), ListOf("command-name patterns", _command_pattern_problem), (
        "Command names to manage: /proc/PID/comm, or the basename of argv[0] where comm "
        "is cut to 15 characters."))
    exclude: tuple[str, ...] = setting((), ListOf("command-name patterns", _command_pattern_problem), (
        "Command names never to touch."))
    include_pids: tuple[int, ...] = setting((), ListOf("PIDs", _pid_problem), (
        "PIDs to manage."))
    exclude_pids: tuple[int, ...] = setting((), ListOf("PIDs", _pid_problem), (
        "PIDs never to touch."))
    include_cgroups: tuple[str, ...] = setting((), ListOf("cgroup path patterns", _cgroup_pattern_problem), (
        "cgroup v2 paths (as in /proc/PID/cgroup, e.g. \"/system.slice/*.service\") "
        "whose processes to manage."))
    exclude_cgroups: tuple[str, ...] = setting((), ListOf("cgroup path patterns", _cgroup_pattern_problem), (
        "cgroup v2 paths whose processes never to touch."))
    include_users: tuple[str | int, ...] = setting((), ListOf("user names or uids", _user_problem), (
        "Users (names or numeric uids) whose processes to manage."))
    exclude_users: tuple[str | int, ...] = setting((), ListOf("user names or uids", _user_problem), (
        "Users whose processes never to touch."))


@dataclass(frozen=True)
class RespectConfig:
    """What others decided, which the daemon leaves alone."""

    user_affinity: bool = setting(True, Bool(), (
        "Never change a thread whose CPU affinity or cpuset someone else narrowed; "
        "the daemon changes only affinities that span every allowed CPU or that it "
        "set itself."))
    user_mempolicy: bool = setting(True, Bool(), (
        "Never move the memory of a process that chose its own memory policy (bind, "
        "preferred or interleave)."))


@dataclass(frozen=True)
class KernelConfig:
    """The kernel's own automatic NUMA balancing, which must not fight autonumad."""

    numa_balancing: str = setting("disable", Choice(("disable", "leave")), (
        "\"disable\": kernel.numa_balancing is turned off while autonumad runs and "
        "the previous value restored when it stops (by the unit's privileged helpers). "
        "\"leave\": not touched (the two balancers may then undo each other's work)."))
    perf_event_paranoid: str = setting("leave", Choice(("leave", "lower")), (
        "Write-fault sampling opens perf events on other processes' threads, which "
        "Debian's kernels refuse at their default kernel.perf_event_paranoid = 3 to "
        "anything without CAP_SYS_ADMIN (the unit does not grant it): the daemon then "
        "places by page location and thread CPU only, and says so in status. "
        "\"lower\": set it to 2 (the upstream default) while autonumad runs and put "
        "the previous value back when it stops (by the unit's privileged helpers). "
        "\"leave\": not touched."))


@dataclass(frozen=True)
class MetricsConfig:
    """Metrics for monitoring."""

    metrics_file: str = setting("", Path(optional=True), (
        "Write Prometheus text-format metrics to this file (atomically) after every "
        "pass, e.g. /var/lib/prometheus/node-exporter/autonumad.prom for "
        "node_exporter's textfile collector. Empty: no metrics file."))


SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig,
    "scan": ScanConfig,
    "migrate": MigrateConfig,
    "policy": PolicyConfig,
    "processes": ProcessesConfig,
    "respect": RespectConfig,
    "kernel": KernelConfig,
    "metrics": MetricsConfig,
}


def settings_of(section: str) -> dict[str, Setting]:
    """Schema of one section: key -> Setting, in file order."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(SECTIONS[section])}


@dataclass(frozen=True)
class Knob:
    """A setting that `autonumactl get/set` changes at runtime."""

    name: str
    section: str
    minimum: int
    maximum: int
    default: int
    doc: str


def _runtime_knobs() -> dict[str, Knob]:
    knobs = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            s: Setting = f.metadata["setting"]
            if s.runtime:
                knobs[f.name] = Knob(f.name, section, s.kind.minimum, s.kind.maximum, f.default, s.doc)
    return knobs


RUNTIME_KNOBS: dict[str, Knob] = _runtime_knobs()


@dataclass(frozen=True)
class Config:
    """The whole configuration. `source` and `notes` say where it came from (not compared)."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    migrate: MigrateConfig = field(default_factory=MigrateConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    processes: ProcessesConfig = field(default_factory=ProcessesConfig)
    respect: RespectConfig = field(default_factory=RespectConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = field(default="built-in defaults", compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def knob(self, name: str) -> int:
        """Current value of a runtime knob."""
        return getattr(getattr(self, _knob(name).section), name)

    def knobs(self) -> dict[str, int]:
        return {name: self.knob(name) for name in RUNTIME_KNOBS}

    def with_knob(self, name: str, value: str | int) -> Config:
        """This config with one runtime knob changed; ConfigError names the knob and the problem."""
        knob = _knob(name)
        number = value
        if isinstance(value, str):
            text = value.strip()
            number = int(text) if re.fullmatch(r"[0-9]{1,19}", text) else None
            if number is None:
                raise ConfigError([Problem(None, None, name, f"must be an integer from {knob.minimum} "
                                                             f"to {knob.maximum}, got {value!r}")])
        try:
            checked = settings_of(knob.section)[name].kind.check(number)
        except ValueError as exc:
            raise ConfigError([Problem(None, None, name, str(exc))]) from None
        section = dataclasses.replace(getattr(self, knob.section), **{name: checked})
        return dataclasses.replace(self, **{knob.section: section})

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every setting as plain JSON-able values, by section (for `autonumactl config`)."""
        return {name: {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in SECTIONS}


def _knob(name: str) -> Knob:
    try:
        return RUNTIME_KNOBS[name]
    except KeyError:
        raise ConfigError([Problem(None, None, None, f"{name!r} is not a runtime knob; knobs are: "
                                   + ", ".join(RUNTIME_KNOBS))]) from None


# ---------------------------------------------------------------- where keys are

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_DOTTED = rf"{_PART}(?:[ \t]*\.[ \t]*{_PART})*"
_HEADER = re.compile(rf"[ \t]*\[\[?[ \t]*({_DOTTED})[ \t]*\]")
_ASSIGN = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=")


def _key_parts(dotted: str) -> tuple[str, ...]:
    parts = []
    for match in re.finditer(_PART, dotted):
        part = match.group(0)
        if part[0] in "\"'":
            try:
                part = tomllib.loads(f"k = {part}")["k"]
            except tomllib.TOMLDecodeError:
                part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def _scan_value(segment: str, depth: int) -> tuple[int, str | None]:
    """Follow brackets through a piece of a value: (open brackets, open multi-line string)."""
    i = 0
    while i < len(segment):
        if segment.startswith(('"""', "'''"), i):
            delimiter = segment[i:i + 3]
            end = segment.find(delimiter, i + 3)
            if end < 0:
                return depth, delimiter
            i = end + 3
            continue
        ch = segment[i]
        if ch == "#":
            break
        if ch == '"':
            i += 1
            while i < len(segment) and segment[i] != '"':
                i += 2 if segment[i] == "\\" else 1
        elif ch == "'":
            end = segment.find("'", i + 1)
            i = len(segment) if end < 0 else end
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        i += 1
    return depth, None


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """First line on which each table or key path appears (tomllib gives no positions)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    depth, in_string = 0, None
    for number, line in enumerate(text.split("\n"), start=1):
        if in_string:
            end = line.find(in_string)
            if end < 0:
                continue
            depth, in_string = _scan_value(line[end + 3:], depth)
            continue
        if depth > 0:
            depth, in_string = _scan_value(line, depth)
            continue
        header = _HEADER.match(line)
        if header:
            table = _key_parts(header.group(1))
            path = table
        else:
            assign = _ASSIGN.match(line)
            if not assign:
                continue
            path = table + _key_parts(assign.group(1))
            depth, in_string = _scan_value(line[assign.end():], 0)
        for end in range(1, len(path) + 1):
            lines.setdefault(path[:end], number)
    return lines


def _key_name(*path: str) -> str:
    """A key path as it would be written in TOML, quoting parts that are not bare keys."""
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p) for p in path)


def _line_of(lines: dict[tuple[str, ...], int], *path: str) -> int | None:
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


# ---------------------------------------------------------------- parsing

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_AT_END = re.compile(r"\s*\(at end of document\)$")


def _syntax_problem(source: str, text: str, exc: tomllib.TOMLDecodeError) -> Problem:
    message = str(exc)
    position = _TOML_POSITION.search(message)
    if position:
        return Problem(source, int(position.group(1)), "TOML syntax",
                       f"{message[:position.start()]} (column {position.group(2)})")
    at_end = _TOML_AT_END.search(message)
    if at_end:
        return Problem(source, max(1, text.count("\n") + 1), "TOML syntax",
                       f"{message[:at_end.start()]} (at end of file)")
    return Problem(source, None, "TOML syntax", message)


def parse_config(text: str, source_name: str = "<config>") -> Config:
    """Parse and validate config text; return the whole Config or raise ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(source_name, text, exc)]) from None
    except RecursionError:
        raise ConfigError([Problem(source_name, None, "TOML syntax", "nested too deeply")]) from None
    except ValueError as exc:
        raise ConfigError([Problem(source_name, None, "TOML syntax", str(exc))]) from None
    lines = _key_lines(text)
    problems: list[Problem] = []
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in SECTIONS:
            problems.append(Problem(source_name, _line_of(lines, name), f"[{_key_name(name)}]",
                                    _unknown("section", name, SECTIONS)))
            continue
        if not isinstance(table, dict):
            problems.append(Problem(source_name, _line_of(lines, name), name,
                                    f"must be a table ([{name}]), not {_type_name(table)}"))
            continue
        schema = settings_of(name)
        values = {}
        for key, raw in table.items():
            where = _line_of(lines, name, key)
            if key not in schema:
                problems.append(Problem(source_name, where, _key_name(name, key),
                                        _unknown("key", key, schema)))
                continue
            try:
                values[key] = schema[key].kind.check(raw)
            except ValueError as exc:
                problems.append(Problem(source_name, where, f"{name}.{key}", str(exc)))
        sections[name] = SECTIONS[name](**values)
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise ConfigError(problems)
    return Config(**sections, source=source_name)


def _unknown(what: str, name: str, known: dict) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; {what}s here: {', '.join(known)}"
    return f"unknown {what}{hint}"


def load_config(path: str = constants.CONFIG_PATH) -> Config:
    """Read the config file. A missing file means the defaults, said in `notes` and the log."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        note = f"{path} does not exist: using the built-in defaults"
        log.info("%s", note)
        return Config(source="built-in defaults", notes=(note,))
    except OSError as exc:
        raise ConfigError([Problem(path, None, None, f"cannot read: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([Problem(path, None, None, f"larger than {MAX_CONFIG_BYTES} bytes; refused")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([Problem(path, line, None, "not valid UTF-8")]) from None
    return parse_config(text, path)


# ---------------------------------------------------------------- documentation

def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=78, initial_indent="# ", subsequent_indent="# ")


def render_example() -> str:
    """The shipped example config: every key, set to its default, with its description."""
    out = [
        "# autonumad configuration (TOML): /etc/autonumad.conf",
        "#",
        "# Every key is listed below, set to its default; delete or change what you like.",
        "# Unknown keys and bad values are refused with the file, line and key named;",
        "# on reload (SIGHUP, `systemctl reload autonumad` or `autonumactl reload`) a",
        "# bad file is refused as a whole and the running configuration stays in force.",
        "# Keys marked \"Runtime knob\" can also be read and changed without a reload",
        "# with `autonumactl get/set KNOB [VALUE]` (until the next reload or restart).",
    ]
    for section, cls in SECTIONS.items():
        out.append("")
        out.extend(_comment(" ".join(cls.__doc__.split())))
        out.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            s: Setting = f.metadata["setting"]
            out.append("")
            out.extend(_comment(s.doc))
            out.extend(_comment(f"Allowed: {s.kind.describe()}."))
            out.append(f"{f.name} = {s.kind.render(f.default)}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m autonumad.config --example` prints the example; `--check FILE` validates one."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--example"]:
        sys.stdout.write(render_example())
        return 0
    if len(args) == 2 and args[0] == "--check":
        try:
            config = load_config(args[1])
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{config.source}: valid" + "".join(f" ({note})" for note in config.notes))
        return 0
    print("usage: python -m autonumad.config --example | --check FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
