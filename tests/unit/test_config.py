import dataclasses
import logging
import os
import re

import pytest

from autonumad import config as cfg
from autonumad.config import RUNTIME_KNOBS, SECTIONS, Config, ConfigError, load_config, parse_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "systemd", "autonumad.conf")


def refusal(text: str, source: str = "test.conf") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return str(info.value)


def test_defaults_are_autonumas_and_the_briefs_values():
    c = Config()
    assert c.knobs() == {"scan_sleep_millisecs": 100, "scan_sleep_pass_millisecs": 10000,
                         "scan_sleep_pass_max_millisecs": 60000,
                         "pages_to_scan": 32768, "migrate_sleep_millisecs": 100, "pages_to_migrate": 32768}
    assert c.daemon.enabled and c.daemon.log_level == "info" and c.daemon.control_group == ""
    assert c.migrate.node_reserve_mb == 256
    assert (c.policy.settle_seconds, c.policy.min_rss_mb, c.policy.locality_target) == (10, 64, 0.9)
    assert c.respect.user_affinity and c.respect.user_mempolicy
    assert c.kernel.numa_balancing == "disable"
    assert c.processes.include == () and c.metrics.metrics_file == ""


def test_shipped_example_parses_to_exactly_the_defaults():
    with open(EXAMPLE, encoding="utf-8") as f:
        assert parse_config(f.read(), EXAMPLE) == Config()


def test_shipped_example_lists_every_key_under_its_section_with_a_comment():
    with open(EXAMPLE, encoding="utf-8") as f:
        lines = f.read().splitlines()
    section = None
    seen = set()
    for number, line in enumerate(lines):
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            section = header.group(1)
        assignment = re.match(r"(\w+) = ", line)
        if assignment:
            assert lines[number - 1].startswith("# "), f"{assignment.group(1)} has no comment"
            seen.add((section, assignment.group(1)))
    expected = {(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert seen == expected


def test_shipped_example_is_the_one_generated_from_the_schema():
    with open(EXAMPLE, encoding="utf-8") as f:
        assert f.read() == cfg.render_example(), \
            "regenerate it: python -m autonumad.config --example > systemd/autonumad.conf"


def test_a_valid_file_sets_what_it_says_and_leaves_the_rest_default():
    c = parse_config('[scan]\npages_to_scan = 4096\n[processes]\nexclude = ["sshd", "re:postgres.*"]\n'
                     'include_users = ["alice", 1000]\n[daemon]\ncontrol_group = "numa"\n')
    assert c.scan.pages_to_scan == 4096
    assert c.processes.exclude == ("sshd", "re:postgres.*")
    assert c.processes.include_users == ("alice", 1000)
    assert c.daemon.control_group == "numa"
    assert c.scan.scan_sleep_millisecs == 100 and c.migrate == Config().migrate


def test_unknown_key_is_refused_with_file_line_and_a_suggestion():
    message = refusal("[daemon]\nenabled = true\n\n[scan]\npages_to_scn = 5\n")
    assert message == "test.conf:5: scan.pages_to_scn: unknown key (did you mean 'pages_to_scan'?)"


def test_unknown_section_is_refused_with_its_line():
    message = refusal("# comment\n[knuma_scand]\npages_to_scan = 5\n")
    assert message.startswith("test.conf:2: [knuma_scand]: unknown section")


def test_type_errors_name_file_line_key_and_problem():
    message = refusal('[scan]\nscan_sleep_millisecs = "100"\nfault_sampling = 1\n'
                      '[policy]\nsettle_seconds = 2.5\nmin_cpu_percent = true\n')
    assert message.splitlines() == [
        "test.conf:2: scan.scan_sleep_millisecs: must be an integer, not a string",
        "test.conf:3: scan.fault_sampling: must be true or false, not an integer",
        "test.conf:5: policy.settle_seconds: must be an integer, not a float",
        "test.conf:6: policy.min_cpu_percent: must be a number, not a boolean",
    ]


@pytest.mark.parametrize("line, problem", [
    ("[scan]\npages_to_scan = 0", "scan.pages_to_scan: must be from 1 to 2147483648, got 0"),
    ("[scan]\nscan_sleep_millisecs = 3600001", "must be from 1 to 3600000, got 3600001"),
    ("[policy]\nlocality_target = 1.5", "policy.locality_target: must be from 0 to 1, got 1.5"),
    ("[policy]\nlocality_target = nan", "got nan"),
    ("[scan]\ncpu_ceiling_percent = inf", "got inf"),
    ("[daemon]\nlog_level = \"verbose\"",
     'must be one of "debug", "info", "warning", "error", got "verbose"'),
    ("[kernel]\nnuma_balancing = \"on\"", 'must be one of "disable", "leave"'),
    ("[daemon]\nstate_file = \"state.json\"", "must be an absolute path"),
    ("[daemon]\ncontrol_group = \"no such group!\"", "is not a valid group name"),
    ("[processes]\ninclude = [\"re:(\"]", "item 1: bad regular expression"),
    ("[processes]\nexclude = [\"ok\", 7]", "item 2: must be a string, not an integer"),
    ("[processes]\ninclude_pids = [0]", "must be a PID from 1 to 4194304, got 0"),
    ("[processes]\ninclude_cgroups = [\"system.slice\"]", "a cgroup pattern starts with \"/\""),
    ("[processes]\nexclude_users = [\"bad user\"]", "is not a valid user name"),
    ("[processes]\ninclude = \"sshd\"", "must be an array of command-name patterns, not a string"),
    ("scan = 5", "scan: must be a table ([scan]), not an integer"),
])
def test_bad_values_are_refused_naming_the_line_and_problem(line, problem):
    message = refusal(line + "\n")
    assert message.startswith(f"test.conf:{line.count(chr(10)) + 1}: ")
    assert problem in message


def test_floats_accept_integers():
    assert parse_config("[policy]\nlocality_target = 1\n").policy.locality_target == 1.0


def test_every_problem_is_reported_and_nothing_is_applied():
    text = "[scan]\npages_to_scan = 1000\nscan_sleep_millisecs = -1\n[migrate]\nbogus = 1\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.conf")
    assert [(p.line, p.key) for p in info.value.problems] == [(3, "scan.scan_sleep_millisecs"),
                                                              (5, "migrate.bogus")]


def test_toml_syntax_errors_give_tomllibs_line():
    message = refusal("[scan]\npages_to_scan = 10\nscan_sleep_millisecs 100\n")
    assert message.startswith("test.conf:3: TOML syntax: ")
    assert refusal('[daemon]\nlog_level = "info\n').startswith("test.conf:2: TOML syntax: ")


def test_lines_are_found_for_dotted_keys_inline_tables_and_after_multiline_values():
    assert refusal("scan.pages_to_scan = 0\n").startswith("test.conf:1: scan.pages_to_scan:")
    message = refusal("\nmigrate = { pages_to_migrate = 0 }\n")
    assert message.startswith("test.conf:2: migrate.pages_to_migrate:")
    text = ('[processes]\ninclude = [\n  "a",\n  "[scan]",\n]\nexclude = """\nx = 1\n"""\n'
            'include_pids = [0]\n')
    message = refusal(text)
    assert message.startswith("test.conf:6: processes.exclude: must be an array")
    assert "test.conf:9: processes.include_pids:" in message


def test_huge_integers_and_deep_nesting_are_refused_cleanly():
    assert "TOML syntax" in refusal("[scan]\npages_to_scan = " + "9" * 5000 + "\n")
    assert "nested too deeply" in refusal("[scan]\npages_to_scan = " + "[" * 5000 + "]" * 5000 + "\n")
    assert "got " + "9" * 37 + "..." in refusal("[scan]\npages_to_scan = " + "9" * 100)


def test_missing_file_means_defaults_with_a_note(tmp_path, caplog):
    path = str(tmp_path / "absent.conf")
    with caplog.at_level(logging.INFO, logger="autonumad.config"):
        c = load_config(path)
    assert c == Config()
    assert c.notes == (f"{path} does not exist: using the built-in defaults",)
    assert "does not exist" in caplog.text


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "autonumad.conf"
    path.write_text("[policy]\nmin_rss_mb = 128\n")
    c = load_config(str(path))
    assert c.policy.min_rss_mb == 128 and c.source == str(path)
    path.write_text("[policy]\nmin_rss_mb = -1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: policy.min_rss_mb: must be from 0")):
        load_config(str(path))


def test_load_config_refuses_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path))
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[daemon]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.conf:2: not valid UTF-8"):
        load_config(str(path))


def test_runtime_knobs_are_autonumas_names_with_ranges():
    assert list(RUNTIME_KNOBS) == ["scan_sleep_millisecs", "scan_sleep_pass_millisecs",
                                   "scan_sleep_pass_max_millisecs", "pages_to_scan",
                                   "migrate_sleep_millisecs", "pages_to_migrate"]
    assert (RUNTIME_KNOBS["pages_to_scan"].minimum, RUNTIME_KNOBS["pages_to_scan"].maximum) == (1, 2 ** 31)
    assert RUNTIME_KNOBS["scan_sleep_millisecs"].maximum == 3_600_000
    assert Config().knobs() == {name: knob.default for name, knob in RUNTIME_KNOBS.items()}


def test_with_knob_returns_a_changed_copy():
    original = Config()
    changed = original.with_knob("pages_to_migrate", " 4096 ")
    assert changed.migrate.pages_to_migrate == 4096 and changed.knob("pages_to_migrate") == 4096
    assert original.migrate.pages_to_migrate == 32768
    assert changed.with_knob("scan_sleep_millisecs", 250).scan.scan_sleep_millisecs == 250


@pytest.mark.parametrize("name, value, message", [
    ("pages_to_scan", "0", "pages_to_scan: must be from 1 to 2147483648, got 0"),
    ("pages_to_scan", "lots", "pages_to_scan: must be an integer from 1 to 2147483648, got 'lots'"),
    ("pages_to_scan", "1e3", "got '1e3'"),
    ("migrate_sleep_millisecs", True, "must be an integer, not a boolean"),
])
def test_with_knob_refuses_bad_values_plainly(name, value, message):
    with pytest.raises(ConfigError) as info:
        Config().with_knob(name, value)
    assert message in str(info.value) and str(info.value).startswith(name + ": ")


def test_with_knob_names_the_knobs_when_given_another_setting():
    with pytest.raises(ConfigError) as info:
        Config().with_knob("node_reserve_mb", "1")
    assert str(info.value) == (
        "'node_reserve_mb' is not a runtime knob; knobs are: scan_sleep_millisecs, "
        "scan_sleep_pass_millisecs, scan_sleep_pass_max_millisecs, pages_to_scan, migrate_sleep_millisecs, "
        "pages_to_migrate")


def test_as_dict_is_plain_data_by_section():
    d = parse_config('[processes]\nexclude = ["a"]\n').as_dict()
    assert list(d) == list(SECTIONS)
    assert d["processes"]["exclude"] == ["a"] and d["scan"]["pages_to_scan"] == 32768


def test_check_command_line(tmp_path, capsys):
    good = tmp_path / "good.conf"
    good.write_text("[daemon]\nenabled = false\n")
    assert cfg.main(["--check", str(good)]) == 0
    bad = tmp_path / "bad.conf"
    bad.write_text("[daemon]\nenabled = 0\n")
    assert cfg.main(["--check", str(bad)]) == 1
    assert f"{bad}:2: daemon.enabled: must be true or false" in capsys.readouterr().err
