"""The control socket's server: answers autonumactl without ever blocking the daemon.

Part of the "state for status / control socket" box. One thread runs a `selectors`
loop over non-blocking sockets with a buffer per connection, so a slow, silent,
hostile or numerous client costs the daemon a file descriptor and a little memory,
never a stall: a line longer than `max_line` gets "too_large" and the connection is
closed; a connection that does not complete a line within `timeout` seconds gets
"timeout" and is closed; beyond `max_clients` connections new ones wait in the
listen backlog until a slot frees.

Who may ask what is checked twice:
  1. the socket file: root:GROUP mode 0660 when a control group is configured,
     root:root 0600 otherwise; bound under a temporary name, given its owner and
     mode, then renamed into place, so it is never reachable with looser ones; its
     directory is created 0755 and must not be writable by anyone else;
  2. every request: SO_PEERCRED gives the peer's pid, uid and gid at connect time;
     uid 0 may do everything; read-only commands (COMMANDS[cmd].read_only) are also
     allowed when the peer's gid or one of its supplementary groups (the "Groups:"
     line of /proc/PID/status, read at accept time, through KernelFiles) is the
     control group; anything else gets "permission_denied".

Handlers are `callable(args: dict) -> JSON-able result`, called on the server's
thread, one at a time: they must be quick and take the daemon's lock (or copy its
published state) themselves. A handler may raise ProtocolError to refuse with a
code of its choosing; any other exception becomes a "failed" reply and is logged
with its traceback; the server carries on.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autonumad import constants
from autonumad.control_protocol import COMMANDS, ProtocolError, encode_error, encode_result, parse_request
from autonumad.kernel.files import KernelFiles

log = logging.getLogger(__name__)

Handler = Callable[[dict], Any]

_RECV_SIZE = 65536
_OUTBUF_PAUSE = 1 << 20  # stop reading a client's requests while this much reply is unsent
_UCRED = struct.Struct("3i")


class ControlServerError(Exception):
    """The socket could not be set up (another daemon serves it, the path is taken, ...)."""


@dataclass(frozen=True)
class Peer:
    """Who is on the other end: from SO_PEERCRED, plus supplementary groups from /proc."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    def describe(self) -> str:
        return f"pid {self.pid} uid {self.uid}"


@dataclass
class _Connection:
    sock: socket.socket
    peer: Peer
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    closing: bool = False
    events: int = 0


def resolve_group(name: str | None) -> int | None:
    """The gid of a control group given by name or number; None for no group or an unknown one."""
    if not name:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        log.warning("control group %r does not exist: only root may use the control socket", name)
        return None


def peer_groups(files: KernelFiles, pid: int, uid: int, gid: int) -> frozenset[int]:
    """gid plus the supplementary groups of `pid`, if /proc/PID/status still belongs to `uid`.

    The check guards against the peer having exited and its pid been reused; then
    only the gid from SO_PEERCRED counts.
    """
    groups = {gid}
    try:
        status = files.read_text(f"proc/{pid}/status")
    except OSError:
        return frozenset(groups)
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uids = fields.get("Uid", "").split()
    if len(uids) < 2 or uids[1] != str(uid):
        return frozenset(groups)
    groups.update(int(g) for g in fields.get("Groups", "").split() if g.isdigit())
    return frozenset(groups)


class ControlServer:
    """Serve the control socket on a thread of its own: `start()`, then `stop()`."""

    def __init__(self, path: str = constants.CONTROL_SOCKET_PATH,
                 handlers: dict[str, Handler] | None = None, group: str | None = None,
                 max_line: int = 65536, timeout: float = 5.0, max_clients: int = 256,
                 files: KernelFiles | None = None):
        self.path = path
        self.handlers = dict(handlers or {})
        self.max_line = max_line
        self.timeout = timeout
        self.max_clients = max_clients
        self.files = files or KernelFiles()
        self._group_name = group or ""
        self._gid = resolve_group(group)
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._listening = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._connections: dict[int, _Connection] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._inode: tuple[int, int] | None = None

    # ------------------------------------------------------------ set-up and tear-down

    def start(self) -> None:
        """Create the socket (errors raise ControlServerError here) and start serving."""
        try:
            self._listener = self._create_socket()
        except OSError as exc:
            raise ControlServerError(f"cannot create the control socket {self.path}: {exc.strerror or exc}") \
                from None
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._listen(True)
        self._thread = threading.Thread(target=self._serve, name="autonumad-control", daemon=True)
        self._thread.start()
        log.info("control socket %s ready (%s)", self.path, self._access_description())

    def stop(self) -> None:
        """Stop serving, close every connection and remove the socket file (if still ours)."""
        self._stopping.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)
        for conn in list(self._connections.values()):
            self._close(conn)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_group(self, group: str | None) -> None:
        """Change the control group (after a config reload): socket ownership and checks."""
        self._group_name = group or ""
        self._gid = resolve_group(group)
        self._apply_permissions(self.path)
        log.info("control socket %s: %s", self.path, self._access_description())

    def _access_description(self) -> str:
        if self._gid is None:
            return "root only"
        return f"root, and group {self._group_name} for read-only requests"

    def _apply_permissions(self, path: str) -> None:
        if self._gid is None:
            os.chown(path, -1, os.getegid())
            os.chmod(path, 0o600)
        else:
            os.chown(path, -1, self._gid)
            os.chmod(path, 0o660)

    def _create_socket(self) -> socket.socket:
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755, exist_ok=True)
            os.chmod(directory, 0o755)
        st = os.stat(directory)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ControlServerError(f"{directory} must belong to uid {os.geteuid()} and be writable by "
                                     f"nobody else to hold the control socket")
        self._remove_stale_socket()
        temporary = f"{self.path}.{os.getpid()}.new"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(temporary):
                os.unlink(temporary)
            sock.bind(temporary)
            self._apply_permissions(temporary)
            sock.listen(max(128, self.max_clients))
            os.rename(temporary, self.path)
        except OSError:
            sock.close()
            if os.path.lexists(temporary):
                os.unlink(temporary)
            raise
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        return sock

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlServerError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)
            log.info("removed stale control socket %s", self.path)
            return
        finally:
            probe.close()
        raise ControlServerError(f"another autonumad is already serving {self.path}")

    # ------------------------------------------------------------ the loop

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                self._serve_once()
            except Exception:
                log.exception("control socket: unexpected error (still serving)")
                time.sleep(0.05)

    def _serve_once(self) -> None:
        now = time.monotonic()
        deadlines = [c.deadline for c in self._connections.values()]
        wait = max(0.0, min(deadlines) - now) if deadlines else None
        for key, events in self._selector.select(wait):
            if key.fileobj is self._wake_r:
                self._drain_wake()
            elif key.fileobj is self._listener:
                self._accept()
            else:
                conn = key.data
                try:
                    if events & selectors.EVENT_READ:
                        self._read(conn)
                    elif events & selectors.EVENT_WRITE:
                        self._pump(conn)
                except Exception:
                    log.exception("control socket: error on a connection from %s; closed",
                                  conn.peer.describe())
                    self._close(conn)
        self._expire(time.monotonic())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self._selector.register(self._listener, selectors.EVENT_READ)
        elif not on and self._listening:
            self._selector.unregister(self._listener)
        self._listening = on

    def _accept(self) -> None:
        while len(self._connections) < self.max_clients:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("control socket: cannot accept a connection: %s", exc.strerror)
                    self._listen(False)
                    return
                raise
            sock.setblocking(False)
            conn = _Connection(sock, self._peer_of(sock), time.monotonic() + self.timeout)
            self._connections[sock.fileno()] = conn
            self._update_interest(conn)
        self._listen(False)

    def _peer_of(self, sock: socket.socket) -> Peer:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        groups = peer_groups(self.files, pid, uid, gid) if uid != 0 else frozenset({gid})
        return Peer(pid, uid, gid, groups)

    def _close(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            if conn.events:
                self._selector.unregister(conn.sock)
            self._connections.pop(fd, None)
            conn.sock.close()
        if not self._stopping.is_set() and len(self._connections) < self.max_clients:
            self._listen(True)

    def _update_interest(self, conn: _Connection) -> None:
        events = 0
        if conn.outbuf:
            events |= selectors.EVENT_WRITE
        if not conn.closing and len(conn.outbuf) < _OUTBUF_PAUSE:
            events |= selectors.EVENT_READ
        if events == conn.events:
            return
        if conn.events and events:
            self._selector.modify(conn.sock, events, conn)
        elif events:
            self._selector.register(conn.sock, events, conn)
        else:
            self._selector.unregister(conn.sock)
        conn.events = events

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._connections.values() if c.deadline <= now]:
            if not conn.closing and not conn.outbuf:
                log.debug("control socket: %s sent no complete request in %.1f s; closing",
                          conn.peer.describe(), self.timeout)
                try:
                    conn.sock.send(encode_error(None, "timeout",
                                                f"no complete request within {self.timeout:g} s; closing"))
                except OSError:
                    pass
            self._close(conn)

    # ------------------------------------------------------------ reading and answering

    def _read(self, conn: _Connection) -> None:
        if conn.sock.fileno() < 0:
            return
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        self._pump(conn)

    def _pump(self, conn: _Connection) -> None:
        """Answer the complete lines received and send the replies, until the socket would block."""
        if conn.sock.fileno() < 0:
            return
        while True:
            self._answer_lines(conn)
            while conn.outbuf:
                try:
                    sent = conn.sock.send(conn.outbuf)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self._close(conn)
                    return
                del conn.outbuf[:sent]
            if conn.closing and not conn.outbuf:
                self._close(conn)
                return
            if conn.outbuf or conn.closing or b"\n" not in conn.inbuf:
                break
        self._update_interest(conn)

    def _answer_lines(self, conn: _Connection) -> None:
        while not conn.closing and len(conn.outbuf) < _OUTBUF_PAUSE:
            end = conn.inbuf.find(b"\n", 0, self.max_line + 1)
            if end < 0:
                break
            line = bytes(conn.inbuf[:end]).rstrip(b"\r")
            del conn.inbuf[:end + 1]
            if line.strip():
                conn.outbuf += self._answer(conn.peer, line)
                conn.deadline = time.monotonic() + self.timeout
        line_too_long = len(conn.inbuf) > self.max_line and conn.inbuf.find(b"\n", 0, self.max_line + 1) < 0
        if line_too_long and not conn.closing:
            log.debug("control socket: %s sent a line over %d bytes; closing",
                      conn.peer.describe(), self.max_line)
            conn.outbuf += encode_error(None, "too_large",
                                        f"request line longer than {self.max_line} bytes; closing")
            conn.closing = True
            conn.inbuf.clear()
            conn.deadline = time.monotonic() + self.timeout

    def _answer(self, peer: Peer, line: bytes) -> bytes:
        """One reply line for one request line; never raises."""
        request_id = None
        try:
            request = parse_request(line)
            request_id = request.id
            self._check_permission(peer, request.cmd)
            handler = self.handlers.get(request.cmd)
            if handler is None:
                raise ProtocolError("unknown_command", f"{request.cmd!r} is not served by this daemon")
            result = self._call(peer, handler, request.cmd, dict(request.args))
            return encode_result(request_id, result)
        except ProtocolError as exc:
            request_id = exc.request_id if request_id is None else request_id
            level = logging.INFO if exc.code == "permission_denied" else logging.DEBUG
            log.log(level, "control socket: %s: %s", peer.describe(), exc)
            return self._error_line(request_id, exc.code, exc.message)
        except (TypeError, ValueError, RecursionError) as exc:
            log.error("control socket: the reply to %s could not be encoded: %s", peer.describe(), exc)
            return self._error_line(request_id, "failed", f"the reply could not be encoded: {exc}")

    def _call(self, peer: Peer, handler: Handler, cmd: str, args: dict) -> Any:
        try:
            result = handler(args)
        except ProtocolError:
            raise
        except Exception as exc:
            log.exception("control socket: %s from %s failed", cmd, peer.describe())
            raise ProtocolError("failed", f"{cmd} failed: {exc}") from None
        if not COMMANDS[cmd].read_only:
            log.info("control socket: %s %s by %s", cmd, args or "", peer.describe())
        return result

    @staticmethod
    def _error_line(request_id: Any, code: str, message: str) -> bytes:
        try:
            return encode_error(request_id, code, message)
        except (TypeError, ValueError, RecursionError):
            return encode_error(None, code, message)

    def _check_permission(self, peer: Peer, cmd: str) -> None:
        if peer.uid == 0:
            return
        if not COMMANDS[cmd].read_only:
            raise ProtocolError("permission_denied", f"{cmd!r} changes the daemon: only root may do that")
        if self._gid is None:
            raise ProtocolError("permission_denied", f"{cmd!r} needs root (no control_group is configured)")
        if self._gid not in peer.groups:
            raise ProtocolError("permission_denied",
                                f"{cmd!r} needs root or membership of group {self._group_name!r}")
