"""Hostile input: thousands of random config texts, knob values and request lines.

The only acceptable outcomes are a valid result or the module's own refusal
(ConfigError with file:line and key, ProtocolError with a known code). The case
counts are in the test names and printed (pytest -s or -rP shows them).
"""

import dataclasses
import json
import os
import shutil
import socket
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autonumad.config import (RUNTIME_KNOBS, SECTIONS, Config, ConfigError, parse_config, settings_of,
                              toml_string)
from autonumad.control_protocol import (COMMANDS, ERROR_CODES, ProtocolError, encode_error, parse_reply,
                                        parse_request)
from autonumad.control_server import ControlServer

# Generated examples; each config text is also parsed cut short at three points and
# without its last line, and each request line cut short at three points (cheap extra
# cases: generating an example, not parsing it, is what costs time here).
CONFIG_TEXTS = 600
KNOB_CASES = 1000
REQUEST_LINES = 1000
LIVE_SERVER_CASES = 300

FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- TOML-ish text

SCHEMA_KEYS = sorted({f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)})
identifiers = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text("abcdefgz_-019", min_size=1, max_size=8),
                        st.text(max_size=4).map(toml_string))
section_names = st.one_of(st.sampled_from(sorted(SECTIONS)), identifiers,
                          st.tuples(st.sampled_from(sorted(SECTIONS)), identifiers).map(".".join))

scalars = st.one_of(
    st.booleans().map(lambda b: "true" if b else "false"),
    st.integers().map(str),
    st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
    st.floats().map(repr),
    st.text(max_size=20).map(toml_string),
    st.sampled_from(['"info"', '"disable"', '"leave"', '"/run/x.sock"', '"re:("', '"re:.*"', '"*"', '""',
                     '"/system.slice/*"', '"root"', "0x10", "0o17", "1_000", "1979-05-27", "07:32:00",
                     "'literal'", '"""multi\nline"""', "'''raw\n'''", "+inf", "-nan", "1e999"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
    st.lists(st.tuples(identifiers, inner), max_size=3).map(
        lambda pairs: "{" + ", ".join(f"{k} = {v}" for k, v in pairs) + "}"),
), max_leaves=4)

assignments = st.tuples(identifiers, values).map(lambda kv: f"{kv[0]} = {kv[1]}")
blocks = st.tuples(st.one_of(st.none(), section_names), st.lists(assignments, max_size=4))
junk = st.text(alphabet="[]{}=\"'#.,\n\\ \tabc019_-+:xe", max_size=40)


def render(block_list):
    out = []
    for section, lines in block_list:
        if section is not None:
            out.append(f"[{section}]")
        out.extend(lines)
    return "\n".join(out) + "\n"


@st.composite
def config_texts(draw):
    text = render(draw(st.lists(blocks, max_size=4)))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        position = draw(st.integers(min_value=0, max_value=len(text)))
        if draw(st.booleans()):
            text = text[:position] + draw(junk) + text[position:]
        else:
            text = text[:position] + text[position + draw(st.integers(min_value=1, max_value=10)):]
    return text


def assert_all_valid(config: Config) -> None:
    for name in SECTIONS:
        section = getattr(config, name)
        for key, setting in settings_of(name).items():
            value = getattr(section, key)
            assert setting.kind.check(list(value) if isinstance(value, tuple) else value) == value


def variants(text):
    """The text, cut short at three points, and without its last line."""
    return [text, text[:len(text) // 2], text[:len(text) // 3], text[:2 * len(text) // 3],
            text.rstrip("\n").rpartition("\n")[0]]


def test_fuzz_config_parser_3000_cases_only_valid_configs_or_config_error():
    counts = {"valid": 0, "refused": 0}

    @settings(max_examples=CONFIG_TEXTS, **FUZZ)
    @given(st.one_of(config_texts(), junk))
    def check(generated):
        for text in variants(generated):
            try:
                config = parse_config(text, "fuzz.conf")
            except ConfigError as exc:
                counts["refused"] += 1
                assert exc.problems
                for problem in exc.problems:
                    assert problem.source == "fuzz.conf" and problem.message and problem.key
                    line = f"fuzz.conf:{problem.line}: " if problem.line is not None else "fuzz.conf: "
                    assert str(problem).startswith(line + problem.key + ": ")
                    if problem.key != "TOML syntax":
                        assert problem.line is not None, str(problem)
                continue
            counts["valid"] += 1
            assert_all_valid(config)

    check()
    cases = counts["valid"] + counts["refused"]
    print(f"config fuzz: {cases} cases from {CONFIG_TEXTS} generated texts, {counts['valid']} valid, "
          f"{counts['refused']} refused")
    assert cases >= 5 * CONFIG_TEXTS


def test_fuzz_runtime_knob_values_1000_cases_only_in_range_or_config_error():
    seen = []

    @settings(max_examples=KNOB_CASES, **FUZZ)
    @given(st.sampled_from(sorted(RUNTIME_KNOBS) + ["bogus", ""]),
           st.one_of(st.text(max_size=30), st.integers().map(str), st.integers(), st.booleans()))
    def check(name, value):
        seen.append(name)
        try:
            changed = Config().with_knob(name, value)
        except ConfigError as exc:
            expected = f"{name}: " if name in RUNTIME_KNOBS else f"{name!r} is not a runtime knob"
            assert str(exc).startswith(expected)
            return
        knob = RUNTIME_KNOBS[name]
        assert knob.minimum <= changed.knob(name) <= knob.maximum

    check()
    print(f"knob fuzz: {len(seen)} cases")
    assert len(seen) >= KNOB_CASES


# ---------------------------------------------------------------- request lines

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=4)
arg_values = st.one_of(
    st.sampled_from([None, True, False, 0, 1, -1, 7, 1 << 20, (1 << 22) + 1, 1 << 40, (1 << 40) + 1, 1.5,
                     "", "1", "lots", [], {}] + sorted(RUNTIME_KNOBS)),
    st.integers())
requests = st.fixed_dictionaries({}, optional={
    "v": st.one_of(st.just(1), json_values),
    "id": json_values,
    "cmd": st.one_of(st.sampled_from(sorted(COMMANDS)), st.text(max_size=10)),
    "args": st.one_of(st.dictionaries(st.text(max_size=6), arg_values, max_size=2), json_values),
    "extra": json_values,
})


@st.composite
def near_valid_requests(draw):
    """Well-formed requests whose arguments are drawn from each command's own argument names."""
    cmd = draw(st.sampled_from(sorted(COMMANDS)))
    names = sorted(COMMANDS[cmd].args)
    args = draw(st.dictionaries(st.sampled_from(names), arg_values, max_size=len(names))) if names else {}
    request = {"v": 1, "cmd": cmd, "args": args, "id": draw(json_scalars)}
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        del request[draw(st.sampled_from(sorted(request)))]
    return request


@st.composite
def request_lines(draw):
    kind = draw(st.integers(min_value=0, max_value=4))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return json.dumps(draw(requests)).encode()
    line = json.dumps(draw(near_valid_requests())).encode()
    if kind == 2:
        return line
    position = draw(st.integers(min_value=0, max_value=len(line)))
    if kind == 3:
        return line[:position]
    return line[:position] + draw(st.binary(min_size=1, max_size=4)) + line[position:]


def check_refusal(exc: ProtocolError) -> None:
    assert exc.code in ERROR_CODES and exc.message
    encode_error(exc.request_id, exc.code, exc.message)  # the server can always send it back


def test_fuzz_request_parser_4000_cases_only_requests_or_protocol_error():
    counts = {"accepted": 0, "refused": 0}

    @settings(max_examples=REQUEST_LINES, **FUZZ)
    @given(request_lines())
    def check(generated):
        for line in (generated[:len(generated) * quarter // 4] for quarter in (4, 3, 2, 1)):
            try:
                request = parse_request(line)
            except ProtocolError as exc:
                counts["refused"] += 1
                check_refusal(exc)
            else:
                counts["accepted"] += 1
                command = COMMANDS[request.cmd]
                assert set(request.args) <= set(command.args)
                assert all(command.args[n].problem(v) is None for n, v in request.args.items())
            try:
                parse_reply(line)
            except ProtocolError as exc:
                check_refusal(exc)

    check()
    cases = counts["accepted"] + counts["refused"]
    print(f"request fuzz: {cases} cases from {REQUEST_LINES} generated lines, {counts['accepted']} accepted, "
          f"{counts['refused']} refused")
    assert cases >= 4 * REQUEST_LINES


def test_fuzz_live_server_300_cases_every_line_gets_one_well_formed_reply():
    directory = tempfile.mkdtemp(prefix="autonumad-fuzz-", dir="/tmp")
    handlers = {name: (lambda args: {"args": dict(args)}) for name in COMMANDS}
    sent = []
    try:
        with ControlServer(os.path.join(directory, "control.sock"), handlers) as server:

            @settings(max_examples=LIVE_SERVER_CASES, **FUZZ)
            @given(request_lines().filter(lambda line: b"\n" not in line and line.strip()))
            def check(line):
                sent.append(line)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5)
                    sock.connect(server.path)
                    sock.sendall(line + b"\n")
                    reply_line = b""
                    while not reply_line.endswith(b"\n"):
                        chunk = sock.recv(65536)
                        assert chunk, "the server closed without replying"
                        reply_line += chunk
                reply = parse_reply(reply_line[:-1])
                assert reply.ok or reply.code in ERROR_CODES

            check()
            reply = parse_reply(_ask(server.path, b'{"v":1,"cmd":"status","id":"after"}\n'))
            assert reply.ok and reply.id == "after"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"live server fuzz: {len(sent)} lines, each answered")
    assert len(sent) >= LIVE_SERVER_CASES


def _ask(path, data):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(data)
        return sock.recv(65536).rstrip(b"\n")
