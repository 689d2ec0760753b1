"""``xl`` refuses bad input with one line and exit 1, never a traceback.

Runs the real ``xl`` command (a subprocess, as a user does) against real
hypervisord + xenstored: domain identifiers that are not ASCII digits or
not in ``0 .. DOMID_FIRST_RESERVED - 1``, numbers beyond what a hypercall
carries, and configuration files that are too deep, too long or too large.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.toolstack.stack import REPO, stack, write_guest  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)

HUGE = "99999999999999999999"  # > 2**64
DOMID_FIRST_RESERVED = 0x7FF0  # xen/include/public/xen.h
SLEEPER = "import trio\nasync def main(domain):\n    await trio.sleep_forever()\n"


def xl(where, *argv: str) -> subprocess.CompletedProcess:
    """``where``: the stack, or a directory for commands that fail before
    they reach a daemon (config checks)."""
    rundir = getattr(where, "rundir", where)
    env = {"PVXEN_RUNDIR": str(rundir), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "toolstack.xl", *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)


def fails_with(stack, argv: tuple[str, ...], *lines: str) -> None:
    p = xl(stack, *argv)
    assert "Traceback" not in p.stderr + p.stdout, (argv, p.stderr)
    assert (p.returncode, p.stderr.splitlines()) == (1, list(lines)), argv


@pytest.fixture
def dom1(stack, tmp_path):
    """A paused domain with id 1: the one a fullwidth "１" used to reach."""
    stack.xl_ok("create", "-p", str(write_guest(tmp_path, "one", SLEEPER)))
    assert stack.domid_of("one") == 1
    return 1


DOMAIN_COMMANDS = [("destroy",), ("pause",), ("unpause",), ("shutdown",), ("reboot",),
                   ("list",), ("mem-set", "{}", "8"), ("mem-max", "{}", "16")]


def _argv(cmd: tuple[str, ...], qualifier: str) -> tuple[str, ...]:
    if len(cmd) == 1:
        return (cmd[0], qualifier)
    return tuple(a.format(qualifier) for a in cmd)


@pytest.mark.parametrize("qualifier", ["²", "１", "٣", HUGE, "1" + "0" * 5000,
                                       str(DOMID_FIRST_RESERVED), "65535", "65537"])
def test_domain_identifier_is_ascii_digits_in_range(stack, dom1, qualifier):
    for cmd in DOMAIN_COMMANDS:
        fails_with(stack, _argv(cmd, qualifier),
                   f"{qualifier} is an invalid domain identifier (rc=-6)")
    # nothing happened to domain 1 ("１" used to destroy it, "65537" is 1 mod 2**16)
    assert 1 in stack.domids()
    assert stack.xl_ok("list", "1").out.splitlines()[1].split()[:2] == ["one", "1"]
    assert stack.read("/local/domain/1/memory/target") == "4096"


def test_domname_out_of_range(stack):
    fails_with(stack, ("domname", HUGE),
               f"Can't get domain name of domain id '{HUGE}', maybe this domain does not exist.")
    fails_with(stack, ("domname", "65536"),
               "Can't get domain name of domain id '65536', maybe this domain does not exist.")


@pytest.mark.parametrize("size", [HUGE, HUGE + "t", "9" * 5000, "9007199254740992t"])
def test_memory_sizes_beyond_int64(stack, dom1, size):
    for cmd in ("mem-set", "mem-max"):
        fails_with(stack, (cmd, "1", size), f"invalid memory size: {size}")
    assert stack.read("/local/domain/1/memory/target") == "4096"


def cfg_file(tmp_path, body: str):
    path = tmp_path / "bad.cfg"
    path.write_text(f'name = "bad"\nkernel = "{tmp_path / "bad.py"}"\n{body}')
    (tmp_path / "bad.py").write_text(SLEEPER)
    return str(path)


@pytest.mark.parametrize("value", [HUGE, f'"-{HUGE}"', "0x" + "f" * 17, "9" * 5000])
def test_config_number_out_of_range(tmp_path, value):
    cfg = cfg_file(tmp_path, f"memory = {value}\n")
    text = value.strip('"')
    shown = text if len(text) <= 40 else text[:37] + "..."
    fails_with(tmp_path, ("create", cfg), f"Parsing config from {cfg}",
               f"{cfg}:3: memory: {shown} could not be parsed as a number: "
               "Numerical result out of range")
    fails_with(tmp_path, ("create", cfg_file(tmp_path, ""), f"memory={value}"),
               f"Parsing config from {cfg}",
               f"<command line>:1: memory: {shown} could not be parsed as a number: "
               "Numerical result out of range")


def test_config_memory_beyond_the_machine_limit(stack, tmp_path):
    cfg = cfg_file(tmp_path, "memory = 9223372036854775807\n")
    fails_with(stack, ("create", cfg), f"Parsing config from {cfg}",
               f"{cfg}:3: memory: 9223372036854775807 is more than 1048576")
    assert stack.domids() == [0]


def test_config_lists_nested_too_deep(tmp_path):
    cfg = cfg_file(tmp_path, "disk = " + "[" * 50_000 + "]" * 50_000 + "\n")
    fails_with(tmp_path, ("create", cfg), f"Parsing config from {cfg}",
               f"{cfg}:3: config parsing error near `[': lists nested more than 64 deep")


def test_config_too_large_is_refused_at_once(tmp_path):
    cfg = cfg_file(tmp_path, "")
    with open(cfg, "r+b") as f:
        f.truncate(40 << 20)  # 40 MB (NULs past the settings)
    t0 = time.monotonic()
    fails_with(tmp_path, ("create", cfg), f"Parsing config from {cfg}",
               f"{cfg}: config file of {40 << 20} bytes refused: the limit is 1048576 bytes")
    assert time.monotonic() - t0 < 10


def test_config_of_a_mebibyte_of_additions_parses_in_linear_time(tmp_path):
    line = "l+=[1]\n"  # 149,796 additions to one list
    body = line * ((1000 << 10) // len(line)) + "memory = 0\n"
    cfg = cfg_file(tmp_path, body)
    last = 3 + body.count("\n") - 1
    # 135 s when each += copied the list; a few seconds now
    fails_with(tmp_path, ("create", cfg), f"Parsing config from {cfg}",
               f"{cfg}:{last}: memory: must be a positive number, not 0")


def test_config_not_utf8(stack, tmp_path):
    cfg = cfg_file(tmp_path, "")
    with open(cfg, "ab") as f:
        f.write(b'cmdline = "a\xffb"\n')
    fails_with(stack, ("create", cfg), f"Parsing config from {cfg}",
               f"{cfg}:3: byte 0xff is not valid UTF-8")
    p = subprocess.run([sys.executable, "-m", "toolstack.xl", "create",
                        cfg_file(tmp_path, "").encode(), b'cmdline="a\xffb"'], cwd=REPO,
                       env={"PVXEN_RUNDIR": str(stack.rundir), "PYTHONPATH": str(REPO)},
                       capture_output=True, timeout=60)
    assert "Traceback" not in p.stderr.decode(errors="replace")
    assert p.returncode == 1 and p.stderr.splitlines()[1] == \
        b"<command line>:1: 'cmdline=\"a\\udcffb\"': not valid UTF-8"
    assert stack.domids() == [0]
