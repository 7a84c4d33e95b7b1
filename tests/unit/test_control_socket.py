import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from autonumad.control_client import ControlError, DaemonNotRunning, request
from autonumad.control_protocol import COMMANDS, ProtocolError, encode_request
from autonumad.control_server import ControlServer, ControlServerError, peer_groups
from autonumad.kernel.files import KernelFiles

NOBODY = 65534
CONTROL_GID = 4242


def make_handlers(calls):
    def status(args):
        return {"enabled": True, "uptime_seconds": 12.5}

    def set_knob(args):
        calls.append(("set", args))
        return {"knob": args["knob"], "value": args["value"]}

    def stats(args):
        raise RuntimeError("the statistics box exploded")

    def advise(args):
        raise ProtocolError("bad_request", "no node has 9999 free CPUs")

    return {"status": status, "set": set_knob, "stats": stats, "advise": advise,
            "config": lambda args: {"not_json": object()}}


@pytest.fixture
def socket_dir():
    # Under /tmp with mode 0755 so that a child running as nobody can reach the socket.
    directory = tempfile.mkdtemp(prefix="autonumad-test-", dir="/tmp")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def make_server(socket_dir):
    servers = []

    def make(**kwargs):
        calls = []
        kwargs.setdefault("handlers", make_handlers(calls))
        server = ControlServer(os.path.join(socket_dir, "run", "control.sock"), **kwargs)
        server.calls = calls
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def exchange(path, data, replies=1, timeout=5.0):
    """Send raw bytes on one connection and return the decoded reply lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        return read_replies(sock, replies)


def read_replies(sock, count):
    buffer = b""
    while buffer.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return [json.loads(line) for line in buffer.split(b"\n") if line]


def closed_by_server(sock):
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_status_round_trip(make_server):
    server = make_server()
    assert request("status", path=server.path) == {"enabled": True, "uptime_seconds": 12.5}


def test_reply_echoes_id_and_version(make_server):
    server = make_server()
    [reply] = exchange(server.path, b'{"v": 1, "id": ["mine", 7], "cmd": "status"}\n')
    assert reply == {"v": 1, "id": ["mine", 7], "ok": True,
                     "result": {"enabled": True, "uptime_seconds": 12.5}}


def test_pipelined_requests_are_answered_in_order(make_server):
    server = make_server()
    lines = b"".join(encode_request("status", request_id=i) for i in range(50))
    replies = exchange(server.path, lines, replies=50)
    assert [r["id"] for r in replies] == list(range(50)) and all(r["ok"] for r in replies)


def test_socket_is_root_only_without_a_group_and_its_directory_is_0755(make_server):
    server = make_server()
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(os.stat(os.path.dirname(server.path)).st_mode) == 0o755


def test_socket_belongs_to_the_control_group_with_mode_0660(make_server):
    server = make_server(group=str(CONTROL_GID))
    st = os.stat(server.path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, CONTROL_GID)
    server.set_group("")
    st = os.stat(server.path)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0)


def test_client_says_plainly_when_the_daemon_is_not_running(socket_dir):
    path = os.path.join(socket_dir, "control.sock")
    with pytest.raises(DaemonNotRunning) as info:
        request("status", path=path)
    assert str(info.value) == f"autonumad is not running (no socket at {path})"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)
    with pytest.raises(DaemonNotRunning, match="not running"):
        request("status", path=path)


def test_stale_socket_is_replaced_but_a_live_one_is_not(make_server, socket_dir):
    os.makedirs(os.path.join(socket_dir, "run"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(os.path.join(socket_dir, "run", "control.sock"))
    server = make_server()
    assert request("status", path=server.path)["enabled"]
    with pytest.raises(ControlServerError, match="another autonumad is already serving"):
        ControlServer(server.path, {}).start()
    assert request("status", path=server.path)["enabled"]


def test_refuses_a_socket_directory_others_can_write(socket_dir):
    os.chmod(socket_dir, 0o777)
    with pytest.raises(ControlServerError, match="writable by nobody else"):
        ControlServer(os.path.join(socket_dir, "control.sock"), {}).start()
    assert os.listdir(socket_dir) == []


def test_refuses_to_replace_a_file_that_is_not_a_socket(socket_dir):
    path = os.path.join(socket_dir, "control.sock")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(ControlServerError, match="exists and is not a socket"):
        ControlServer(path, {}).start()
    with open(path) as f:
        assert f.read() == "precious"


def test_stop_removes_the_socket(make_server):
    server = make_server()
    server.stop()
    assert not os.path.exists(server.path)
    with pytest.raises(DaemonNotRunning):
        request("status", path=server.path)


def test_garbage_gets_bad_request_and_the_connection_keeps_serving(make_server):
    server = make_server()
    lines = b"\xff\xfegarbage {{{\n" + b"[1,2]\n" + encode_request("status", request_id=3)
    replies = exchange(server.path, lines, replies=3)
    assert [r["ok"] for r in replies] == [False, False, True]
    assert replies[0]["error"]["code"] == replies[1]["error"]["code"] == "bad_request"
    assert replies[2]["id"] == 3


@pytest.mark.parametrize("line, code", [
    (b'{"v": 1, "cmd": "frobnicate"}', "unknown_command"),
    (b'{"v": 2, "cmd": "status"}', "unsupported_version"),
    (b'{"cmd": "status"}', "bad_request"),
    (b'{"v": 1, "cmd": "set", "args": {"knob": "pages_to_scan"}}', "bad_request"),
    (b'{"v": 1, "cmd": "show"}', "unknown_command"),
])
def test_refusals_carry_the_protocol_code(make_server, line, code):
    server = make_server()
    [reply] = exchange(server.path, line + b"\n")
    assert reply["ok"] is False and reply["error"]["code"] == code and reply["error"]["message"]


def test_ten_megabyte_line_gets_too_large_and_the_server_keeps_serving(make_server):
    server = make_server()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(server.path)

        def flood():
            try:
                sock.sendall(b"x" * (10 << 20))
            except OSError:
                pass  # the server closed the connection, as it should

        sender = threading.Thread(target=flood)
        sender.start()
        [reply] = read_replies(sock, 1)
        assert reply["error"]["code"] == "too_large"
        assert closed_by_server(sock)
        sender.join(10)
    assert request("status", path=server.path)["enabled"]


def test_half_line_client_times_out_while_others_are_served(make_server):
    server = make_server(timeout=1.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.settimeout(5)
        stalled.connect(server.path)
        stalled.sendall(b'{"v": 1, "cmd": "sta')
        started = time.monotonic()
        for _ in range(50):
            assert request("status", path=server.path)["enabled"]
        assert time.monotonic() - started < 1.0, "the others were not served while the client stalled"
        [reply] = read_replies(stalled, 1)
        waited = time.monotonic() - started
        assert reply["error"]["code"] == "timeout" and 0.9 <= waited < 3.0
        assert closed_by_server(stalled)
    assert request("status", path=server.path)["enabled"]


def test_200_concurrent_connections_are_all_served(make_server):
    server = make_server()
    sockets = []
    try:
        for i in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(server.path)
            sockets.append(sock)
        for i, sock in enumerate(sockets):
            sock.sendall(encode_request("status", request_id=i))
        for i, sock in enumerate(sockets):
            [reply] = read_replies(sock, 1)
            assert reply["id"] == i and reply["ok"]
    finally:
        for sock in sockets:
            sock.close()


def test_200_concurrent_clients_in_threads(make_server):
    server = make_server()
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(lambda _: request("status", path=server.path, timeout=10), range(1000)))
    assert len(results) == 1000 and all(r["enabled"] for r in results)


def test_connections_beyond_max_clients_wait_for_a_free_slot(make_server):
    server = make_server(max_clients=3, timeout=30)
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for sock in idle:
            sock.connect(server.path)
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(request, "status", path=server.path, timeout=10)
            time.sleep(0.3)
            assert not waiting.done()
            idle.pop().close()
            assert waiting.result(timeout=5)["enabled"]
    finally:
        for sock in idle:
            sock.close()


def test_handler_exception_gives_failed_and_the_server_survives(make_server, caplog):
    server = make_server()
    with caplog.at_level(logging.ERROR, logger="autonumad.control_server"):
        with pytest.raises(ControlError) as info:
            request("stats", path=server.path)
    assert info.value.code == "failed"
    assert "the statistics box exploded" in info.value.message
    assert "Traceback" in caplog.text and "RuntimeError" in caplog.text
    assert request("status", path=server.path)["enabled"]


def test_unencodable_result_gives_failed(make_server):
    server = make_server()
    with pytest.raises(ControlError) as info:
        request("config", path=server.path)
    assert info.value.code == "failed"


def test_handler_may_refuse_with_its_own_code(make_server):
    server = make_server()
    with pytest.raises(ControlError) as info:
        request("advise", {"cpus": 9999}, path=server.path)
    assert (info.value.code, info.value.message) == ("bad_request", "no node has 9999 free CPUs")


def test_root_may_change_things(make_server):
    server = make_server()
    assert request("set", {"knob": "pages_to_scan", "value": "1024"}, path=server.path) == \
        {"knob": "pages_to_scan", "value": "1024"}
    assert server.calls == [("set", {"knob": "pages_to_scan", "value": "1024"})]


def as_nobody(path, gid, groups, requests, loosen_socket=False):
    """Run `requests` from a child that dropped to uid nobody; return {cmd: [code or "ok", detail]}."""
    if loosen_socket:
        os.chmod(path, 0o666)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = {}
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(NOBODY)
            for cmd, args in requests:
                try:
                    out[cmd] = ["ok", request(cmd, args, path=path, timeout=5)]
                except ControlError as exc:
                    out[cmd] = [exc.code, exc.message]
        except BaseException as exc:
            out = {"child": ["crashed", repr(exc)]}
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)


READ_AND_CHANGE = [("status", None), ("set", {"knob": "pages_to_scan", "value": 1})]


def test_non_root_member_of_the_group_may_read_but_not_change(make_server):
    server = make_server(group=str(CONTROL_GID))
    result = as_nobody(server.path, NOBODY, [CONTROL_GID], READ_AND_CHANGE)
    assert result["status"] == ["ok", {"enabled": True, "uptime_seconds": 12.5}]
    assert result["set"] == ["permission_denied", "'set' changes the daemon: only root may do that"]
    assert server.calls == []


def test_the_peers_primary_group_counts_too(make_server):
    server = make_server(group=str(CONTROL_GID))
    result = as_nobody(server.path, CONTROL_GID, [], READ_AND_CHANGE)
    assert result["status"][0] == "ok" and result["set"][0] == "permission_denied"


def test_non_root_outside_the_group_cannot_even_connect(make_server):
    server = make_server(group=str(CONTROL_GID))
    result = as_nobody(server.path, NOBODY, [], [("status", None)])
    assert result["status"][0] == "permission_denied" and "permission denied on" in result["status"][1]


def test_peer_credentials_are_checked_even_if_the_socket_file_is_loosened(make_server):
    server = make_server(group=str(CONTROL_GID))
    result = as_nobody(server.path, NOBODY, [4243], READ_AND_CHANGE, loosen_socket=True)
    assert result["status"] == ["permission_denied", "'status' needs root or membership of group '4242'"]
    assert result["set"][0] == "permission_denied"
    server.set_group("")
    result = as_nobody(server.path, NOBODY, [CONTROL_GID], [("status", None)], loosen_socket=True)
    assert result["status"] == ["permission_denied", "'status' needs root (no control_group is configured)"]


def test_peer_groups_ignore_a_reused_pid(tmp_path):
    status = tmp_path / "proc" / "77" / "status"
    status.parent.mkdir(parents=True)
    status.write_text("Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4242 27 \n")
    files = KernelFiles(str(tmp_path))
    assert peer_groups(files, 77, 1000, 100) == {100, 4242, 27}
    assert peer_groups(files, 77, 1001, 100) == {100}
    assert peer_groups(files, 78, 1000, 100) == {100}


def test_every_command_in_the_table_says_whether_it_only_reads():
    changing = {name for name, command in COMMANDS.items() if not command.read_only}
    assert changing == {"set", "enable", "disable", "reload"}
