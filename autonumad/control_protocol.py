"""The control socket's protocol: newline-delimited JSON requests and replies, version 1.

Part of the "state for status / control socket" box: pure encoding, decoding and
validation, with no I/O, so the server, the client and the fuzz tests share it.

    request: {"v": 1, "id": ANY, "cmd": "status", "args": {...}}
    reply:   {"v": 1, "id": ANY, "ok": true, "result": {...}}
             {"v": 1, "id": ANY, "ok": false, "error": {"code": CODE, "message": "..."}}

One request per line, one reply per line, in order; "id" (any JSON value, default
null) is echoed back; "args" defaults to {}. `COMMANDS` is the one table of what
may be asked: each command's arguments and whether it only reads (allowed to the
configured control group) or changes the daemon (root only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from autonumad.config import PID_MAX_LIMIT, RUNTIME_KNOBS

VERSION = 1

ERROR_CODES = (
    "bad_request",          # not JSON, not an object, missing or ill-typed fields or arguments
    "unknown_command",      # no such command (or this daemon does not serve it)
    "permission_denied",    # the peer may not ask this
    "too_large",            # the line is longer than the server's limit (connection closed)
    "timeout",              # no complete line in time (connection closed)
    "unsupported_version",  # "v" is not a version this side speaks
    "failed",               # the command was valid but could not be carried out
)


class ProtocolError(Exception):
    """A request or reply refused, with one of ERROR_CODES.

    Handlers may raise it too, to refuse a request with a code of their choosing
    (e.g. "bad_request" for a knob value out of range).
    """

    def __init__(self, code: str, message: str, request_id: Any = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Arg:
    """One argument: its JSON type, whether it must be given, its bounds or choices."""

    type: str  # "int", "str" or "int_or_str"
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if self.type == "int" and not is_int:
            return "must be an integer"
        if self.type == "str" and not isinstance(value, str):
            return "must be a string"
        if self.type == "int_or_str" and not (is_int or isinstance(value, str)):
            return "must be an integer or a string"
        if is_int and self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum}"
        if is_int and self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum}"
        if self.choices and value not in self.choices:
            return "must be one of " + ", ".join(self.choices)
        return None


@dataclass(frozen=True)
class Command:
    name: str
    read_only: bool
    doc: str
    args: Mapping[str, Arg] = field(default_factory=dict)


_PID = Arg("int", minimum=1, maximum=PID_MAX_LIMIT)
_KNOBS = tuple(RUNTIME_KNOBS)

COMMANDS: Mapping[str, Command] = MappingProxyType({c.name: c for c in (
    Command("status", True, "on/off and why, nodes, managed processes, counters, uptime"),
    Command("stats", True, "per-node and per-process counters (one process with pid)", {"pid": _PID}),
    Command("show", True, "the daemon's view of processes: placement, decisions (one with pid)",
            {"pid": _PID}),
    Command("get", True, "runtime knob values (one with knob, else all)",
            {"knob": Arg("str", choices=_KNOBS)}),
    Command("config", True, "the configuration in force"),
    Command("advise", True, "nodes a job of this size should start on now (numad -w CPUS[:MB])",
            {"cpus": Arg("int", required=True, minimum=1, maximum=1 << 20),
             "memory_mb": Arg("int", minimum=0, maximum=1 << 40)}),
    Command("set", False, "change a runtime knob",
            {"knob": Arg("str", required=True, choices=_KNOBS),
             "value": Arg("int_or_str", required=True)}),
    Command("enable", False, "resume balancing"),
    Command("disable", False, "stop balancing, drop per-process state, restore affinities it set"),
    Command("reload", False, "re-read the config file; a bad file is refused and the old one kept"),
)})


@dataclass(frozen=True)
class Request:
    id: Any
    cmd: str
    args: Mapping[str, Any]

    @property
    def command(self) -> Command:
        return COMMANDS[self.cmd]


@dataclass(frozen=True)
class Reply:
    id: Any
    ok: bool
    result: Any = None
    code: str | None = None
    message: str | None = None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _load_object(line: bytes, what: str) -> dict:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("bad_request", f"{what} is not valid UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError("bad_request", f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError("bad_request", f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", f"{what} must be a JSON object")
    return obj


def _check_version(obj: dict, what: str, request_id: Any) -> None:
    version = obj.get("v")
    if "v" not in obj:
        raise ProtocolError("bad_request",
                            f"{what} has no \"v\" (protocol version; this side speaks {VERSION})", request_id)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ProtocolError("bad_request", "\"v\" must be an integer", request_id)
    if version != VERSION:
        raise ProtocolError("unsupported_version",
                            f"protocol version {version} is not supported (this side speaks {VERSION})",
                            request_id)


def parse_request(line: bytes) -> Request:
    """Decode and validate one request line (without its newline); raise ProtocolError."""
    obj = _load_object(line, "request")
    request_id = obj.get("id")
    _check_version(obj, "request", request_id)
    unknown = sorted(set(obj) - {"v", "id", "cmd", "args"})
    if unknown:
        raise ProtocolError("bad_request", f"unknown request field {unknown[0]!r}", request_id)
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("bad_request", "\"cmd\" must be a string naming a command", request_id)
    command = COMMANDS.get(cmd)
    if command is None:
        raise ProtocolError("unknown_command", f"unknown command {cmd[:64]!r}; commands: "
                            + ", ".join(COMMANDS), request_id)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("bad_request", "\"args\" must be a JSON object", request_id)
    for name, value in args.items():
        spec = command.args.get(name)
        if spec is None:
            raise ProtocolError("bad_request", f"{cmd}: unknown argument {name[:64]!r}"
                                + (f"; arguments: {', '.join(command.args)}" if command.args else
                                   " (it takes none)"), request_id)
        problem = spec.problem(value)
        if problem:
            raise ProtocolError("bad_request", f"{cmd}: argument {name!r} {problem}", request_id)
    for name, spec in command.args.items():
        if spec.required and name not in args:
            raise ProtocolError("bad_request", f"{cmd}: argument {name!r} is required", request_id)
    return Request(request_id, cmd, MappingProxyType(dict(args)))


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"


def encode_request(cmd: str, args: Mapping[str, Any] | None = None, request_id: Any = None) -> bytes:
    return _encode({"v": VERSION, "id": request_id, "cmd": cmd, "args": dict(args or {})})


def encode_result(request_id: Any, result: Any) -> bytes:
    """A success reply line; raises TypeError/ValueError if `result` is not plain JSON data."""
    return _encode({"v": VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(request_id: Any, code: str, message: str) -> bytes:
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return _encode({"v": VERSION, "id": request_id, "ok": False,
                    "error": {"code": code, "message": message}})


def parse_reply(line: bytes) -> Reply:
    """Decode one reply line; raise ProtocolError("bad_request", ...) if it is malformed."""
    obj = _load_object(line, "reply")
    _check_version(obj, "reply", obj.get("id"))
    ok = obj.get("ok")
    if ok is True and "result" in obj:
        return Reply(obj.get("id"), True, result=obj["result"])
    error = obj.get("error")
    if ok is False and isinstance(error, dict) and isinstance(error.get("code"), str) \
            and isinstance(error.get("message"), str):
        return Reply(obj.get("id"), False, code=error["code"], message=error["message"])
    raise ProtocolError("bad_request", "reply has neither a result nor a well-formed error")
