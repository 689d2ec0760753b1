"""xl.cfg syntax (xl.cfg(5), libxlutil's grammar): pure parser tests."""

from __future__ import annotations

import pytest

from toolstack import xlcfg
from toolstack.xlcfg import ConfigErrors, parse, parse_c_long, parse_overrides

pytestmark = pytest.mark.timeout(10)


def test_every_value_type():
    cfg = parse('name = "guest"\nmemory = 512\nmaxmem = 0x400\nvcpus = 010\n'
                "kernel = 'k.py'\ndisk = [ 'a', \"b\", 3, [ 'x', 'y' ] ]\nempty = []\n",
                "g.cfg")
    assert cfg.get_string("name") == "guest"
    assert cfg.get_long("memory") == 512
    assert cfg.get_long("maxmem") == 1024  # hex
    assert cfg.get_long("vcpus") == 8  # leading zero: octal, as strtol(.., 0)
    assert cfg.get_string("kernel") == "k.py"
    assert cfg.get_list("disk") == ["a", "b", "3", ["x", "y"]]
    assert cfg.get_list("empty") == []
    assert cfg.settings["disk"].value.items[2].kind == "number"
    assert cfg.settings["disk"].value.items[3].kind == "list"


def test_numbers_in_strings_and_booleans():
    cfg = parse('memory = "256"\nflag = 0\nother = 7\n')
    assert cfg.get_long("memory") == 256  # xlu_cfg_get_long takes quoted numbers too
    assert cfg.get_bool("flag") is False
    assert cfg.get_bool("other") is True
    assert cfg.get_bool("absent", True) is True


def test_comments_blank_lines_and_semicolons():
    cfg = parse("# a comment\n\n   \nname='a' ; memory=4;vcpus=2 # trailing\n;;\n")
    assert cfg.as_dict() == {"name": "a", "memory": "4", "vcpus": "2"}


def test_last_setting_wins_and_plus_equals_appends():
    cfg = parse("memory = 4\nmemory = 8\ndisk = ['a']\ndisk += ['b', 'c']\n")
    assert cfg.get_long("memory") == 8
    assert cfg.get_list("disk") == ["a", "b", "c"]


def test_lists_span_lines_with_trailing_comma():
    cfg = parse("vif = [\n  'mac=00:16:3e:00:00:01',\n\n  'bridge=xenbr0',\n]\nname='x'\n")
    assert cfg.get_list("vif") == ["mac=00:16:3e:00:00:01", "bridge=xenbr0"]
    assert cfg.settings["name"].line == 6


def test_escapes_in_quoted_strings():
    cfg = parse(r'a = "q\"uote\\ \t\n\x41"' "\n" r"b = 'it\'s'" "\n")
    assert cfg.get_string("a") == 'q"uote\\ \t\nA'
    assert cfg.get_string("b") == "it's"


def test_no_newline_at_end_of_file():
    assert parse('name = "x"').get_string("name") == "x"


def test_bad_lines_report_file_line_and_reason_and_all_of_them():
    text = 'name = "ok"\nmemory = 5 6\nfoo\nbar = ]\nq = [1 2]\nlast = "unterminated\n'
    with pytest.raises(ConfigErrors) as ei:
        parse(text, "bad.cfg")
    lines = str(ei.value).splitlines()
    assert lines[0].startswith("bad.cfg:2: config parsing error near `6': syntax error")
    assert lines[1].startswith("bad.cfg:3: config parsing error near <newline>")
    assert "expecting '=' or '+='" in lines[1]
    assert lines[2].startswith("bad.cfg:4: config parsing error near `]'")
    assert lines[3].startswith("bad.cfg:5: config parsing error near `2'")
    assert lines[4] == 'bad.cfg:6: config parsing error near `"unterminated\': ' \
                       "unterminated quoted string"
    assert [e.line for e in ei.value.errors] == [2, 3, 4, 5, 6]


def test_python_looking_config_gets_the_hint():
    with pytest.raises(ConfigErrors) as ei:
        parse("memory = 1 + 2\n", "py.cfg")
    assert str(ei.value.errors[0]) == "py.cfg:1: config parsing error near `+': lexical error"
    assert "Arbitrary Python is no longer supported" in str(ei.value)


def test_bad_escape_and_bad_plus_equals():
    with pytest.raises(ConfigErrors) as ei:
        parse('a = "\\q"\n', "e.cfg")
    assert "invalid character after backlash" in str(ei.value)
    with pytest.raises(ConfigErrors) as ei:
        parse("m = 4\nm += 5\n", "p.cfg")
    assert str(ei.value) == "p.cfg:2: m: += needs a list on both sides"


def test_type_errors_name_the_line():
    cfg = parse('name = "x"\n\nmemory = "lots"\ndisk = ["a"]\n', "t.cfg")
    with pytest.raises(xlcfg.ConfigError) as ei:
        cfg.get_long("memory")
    assert str(ei.value) == "t.cfg:3: memory: invalid number 'lots'"
    with pytest.raises(xlcfg.ConfigError) as ei:
        cfg.get_string("disk")
    assert str(ei.value) == "t.cfg:4: disk: expected a string, got a list"
    with pytest.raises(xlcfg.ConfigError):
        cfg.get_list("name")


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("12", 12), ("0x1F", 31), ("017", 15), ("-3", -3), (" 42 ", 42),
    ("08", None), ("1e3", None), ("", None), ("0x", None), ("12abc", None)])
def test_parse_c_long(text, value):
    assert parse_c_long(text) == value


def test_command_line_overrides():
    cfg = parse('name = "a"\nmemory = 4\n', "f.cfg")
    cfg.update(parse_overrides(["memory=64", 'name="b"; vcpus=2']))
    assert cfg.as_dict() == {"name": "b", "memory": "64", "vcpus": "2"}
    assert cfg.settings["memory"].source == "<command line>"
    with pytest.raises(ConfigErrors) as ei:
        parse_overrides(["memory=4", "vcpus="])
    assert str(ei.value).startswith("<command line>:2: 'vcpus=': config parsing error")
