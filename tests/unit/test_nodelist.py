import pytest

from autonumad.nodelist import format_list, parse_list


def test_parse_list_reads_ranges_and_singles():
    assert parse_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]


def test_parse_list_all_needs_the_valid_ids():
    assert parse_list("all", [2, 0]) == [0, 2]
    with pytest.raises(ValueError, match="'all'"):
        parse_list("all")


def test_parse_list_names_the_bad_element():
    with pytest.raises(ValueError, match="'x'"):
        parse_list("0,x")
    with pytest.raises(ValueError, match="'3-1'"):
        parse_list("3-1")


def test_format_list_round_trips():
    assert format_list([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"
    assert parse_list(format_list([0, 2, 4, 5, 6])) == [0, 2, 4, 5, 6]
    assert format_list([]) == ""
