"""The control socket's client: what autonumactl uses to ask the running daemon.

Part of the "state for status / control socket" box. `request(cmd, args)` sends one
request and returns the reply's result. When no daemon answers it raises
`DaemonNotRunning` (callers may then fall back to reading the system directly);
a refusal from the daemon raises `ControlError` with the protocol's error code.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from typing import Any, Mapping

from autonumad import constants
from autonumad.control_protocol import ProtocolError, encode_request, parse_reply

MAX_REPLY = 64 << 20

_ids = itertools.count(1)


class DaemonNotRunning(Exception):
    """Nothing serves the control socket."""


class ControlError(Exception):
    """The daemon refused or failed a request (or the exchange broke down); `code` says how."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def request(cmd: str, args: Mapping[str, Any] | None = None, path: str = constants.CONTROL_SOCKET_PATH,
            timeout: float = 5.0) -> Any:
    """Send one request to the daemon and return its result."""
    request_id = f"{os.getpid()}-{next(_ids)}"
    line = encode_request(cmd, args, request_id)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _connect(sock, path, timeout)
        try:
            sock.sendall(line)
            reply_line = _read_line(sock, deadline)
        except TimeoutError:
            raise ControlError("timeout", f"autonumad did not reply within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError("failed", f"lost the connection to autonumad: {exc.strerror or exc}") from None
    try:
        reply = parse_reply(reply_line)
    except ProtocolError as exc:
        raise ControlError(exc.code, f"unreadable reply from autonumad: {exc.message}") from None
    if not reply.ok:
        raise ControlError(reply.code, reply.message)
    if reply.id != request_id:
        raise ControlError("failed", f"reply to another request (id {reply.id!r}, expected {request_id!r})")
    return reply.result


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    try:
        sock.connect(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DaemonNotRunning(f"autonumad is not running (no socket at {path})") from None
    except ConnectionRefusedError:
        raise DaemonNotRunning(f"autonumad is not running (nothing listens on {path})") from None
    except PermissionError:
        raise ControlError("permission_denied",
                           f"permission denied on {path}: only root and the daemon's control_group "
                           f"may use it") from None
    except TimeoutError:
        raise ControlError("timeout", f"autonumad did not accept a connection within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError("failed", f"cannot connect to {path}: {exc.strerror or exc}") from None


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to the first newline (the reply), before the deadline."""
    data = bytearray()
    while True:
        end = data.find(b"\n")
        if end >= 0:
            return bytes(data[:end])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise ControlError("failed", "autonumad closed the connection without replying")
        data += chunk
        if len(data) > MAX_REPLY:
            raise ControlError("too_large", f"reply from autonumad longer than {MAX_REPLY} bytes")
