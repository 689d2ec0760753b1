"""Our xenstore-* tools against Debian's C tools, byte for byte.

Both run against the same real xenstored (the ``xenstored`` fixture) with
the same ``argv[0]`` (``/usr/bin/xenstore-MODE``), so stdout, stderr and
the exit code must be identical. Mutating tools run on two fresh copies of
a tree, and the resulting stores are compared too. A fake daemon that
answers the first commit with EAGAIN checks the retry loops.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from tests.conftest import REPO, require_c_tools
from libxen.xenstore.wire import FrameParser, encode
from libxen.xenstore.sync import XsSyncClient

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

MODES = ("ls", "read", "write", "rm", "list", "exists", "chmod", "watch")
Result = tuple[int, bytes, bytes]


@pytest.fixture(autouse=True)
def _c_tools() -> None:
    require_c_tools(*(f"xenstore-{m}" for m in MODES))


def c_argv(mode: str, *args: str) -> list[str]:
    return [f"/usr/bin/xenstore-{mode}", *args]


def our_argv(mode: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "xenstored.cli", f"/usr/bin/xenstore-{mode}", *args]


def run(argv: list[str], env: dict[str, str]) -> Result:
    env = dict(env, PYTHONPATH=str(REPO))
    p = subprocess.run(argv, env=env, capture_output=True, timeout=30, cwd=REPO)
    return p.returncode, p.stdout, p.stderr


def both(env: dict[str, str], mode: str, *args: str) -> tuple[Result, Result]:
    return run(c_argv(mode, *args), env), run(our_argv(mode, *args), env)


def populate(xs: XsSyncClient, top: str = "/t") -> None:
    """A tree with every awkward kind of value and shape."""
    xs.write(f"{top}/long", b"v" * 120)
    xs.write(f"{top}/ctl", b"a\x01\x01b\\\t\n\r\x7f\xff\x00end")
    xs.write(f"{top}/empty", b"")
    xs.write(f"{top}/bs", b"back\\slash\\")
    xs.write(f"{top}/quote", b'say "hi" (now)')
    xs.write(f"{top}/escaped-long", b"\x01" * 30)
    xs.write(f"{top}/" + "n" * 90, b"x")
    xs.write(f"{top}/deep" + "/a" * 80, b"bottom value")
    xs.write(f"{top}/perm", b"v")
    xs.set_perms(f"{top}/perm", ["b0", "r5", "w7"])
    xs.write(f"{top}/perm/child", b"inherits")
    xs.write(f"{top}/dir/x", b"1")
    xs.write(f"{top}/dir/y", b"2")


@pytest.fixture
def env(xenstored) -> dict[str, str]:
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        populate(xs)
    return xenstored.client_env


def assert_same(results: tuple[Result, Result]) -> Result:
    c, ours = results
    assert ours == c, f"C tool gave {c!r}\nours gave {ours!r}"
    return c


@pytest.mark.parametrize("args", [
    [], ["-f"], ["-p"], ["-f", "-p"], ["-s"], ["/t"], ["-p", "/t"], ["/t/deep"],
    ["-f", "/t/perm"], ["/t/empty"], ["/nope"], ["-p", "/nope/deeper"], ["t"],
    ["/t/dir", "/t/perm"], ["--flat", "--prefix", "/t/dir"], ["-x", "/t/dir"],
])
def test_ls(env: dict[str, str], args: list[str]) -> None:
    code, out, _ = assert_same(both(env, "ls", *args))
    if args in ([], ["-p"]):
        assert code == 0 and b"\\..." in out  # the 80-column cut happened


@pytest.mark.parametrize("mode, args", [
    ("read", ["/t/ctl"]), ("read", ["-R", "/t/ctl"]), ("read", ["-p", "/t/long", "/t/bs"]),
    ("read", ["-p", "-R", "/t/quote", "/t/empty"]), ("read", ["/t/bs", "/nope", "/t/ctl"]),
    ("read", ["/nope"]), ("read", []), ("read", ["-h"]),
    ("list", ["/t"]), ("list", ["-p", "/t/dir", "/t/perm"]), ("list", ["-p", "/"]),
    ("list", ["/t/dir", "/nope"]), ("list", ["/t/empty"]),
    ("exists", ["/t/dir"]), ("exists", ["/nope"]), ("exists", ["/t/dir", "/nope"]),
    ("exists", ["-f", "/t"]),
])
def test_readers(env: dict[str, str], mode: str, args: list[str]) -> None:
    assert_same(both(env, mode, *args))


def store_dump(env: dict[str, str], path: str = "/r") -> Result:
    return run(c_argv("ls", "-f", "-p", path), env)


def fresh(env: dict[str, str]) -> None:
    with XsSyncClient.open(env["XENSTORED_PATH"]) as xs:
        xs.rm("/r")
        xs.write("/r/a/b/c", b"1")
        xs.write("/r/a/x", b"")
        xs.write("/r/k", b"v")
        xs.write("/r/e/f/g", b"1")
        xs.set_perms("/r/e", ["b0", "r2"])


def both_mutating(env: dict[str, str], mode: str, *args: str) -> None:
    """Run each tool on a fresh /r and compare the outputs and the stores."""
    fresh(env)
    c = run(c_argv(mode, *args), env), store_dump(env)
    fresh(env)
    ours = run(our_argv(mode, *args), env), store_dump(env)
    assert ours == c, f"C: {c!r}\nours: {ours!r}"


@pytest.mark.parametrize("args", [
    ["/r/w", r"a\x01\001b\\"], ["/r/w", "tr\\"], ["/r/w", r"\x-1\x 4z\x0xq\400\8\q"],
    ["/r/w", r"\t\n\r" + "\u00e9"], ["-R", "/r/w", r"x\ty"], ["/r/w", ""],
    ["/r/p", "1", "/r/q/deep", "2"], ["/r/p", "1", "//bad", "2"], ["/r/w"], ["/r/bad/", "v"],
    ["/r/p", "1", "/r/huge", "h" * 5000],  # over XENSTORE_PAYLOAD_MAX: refused locally
])
def test_write(env: dict[str, str], args: list[str]) -> None:
    both_mutating(env, "write", *args)


@pytest.mark.parametrize("args", [
    ["-t", "/r/a/b/c"], ["-t", "/r/e/f/g"], ["/r/a"], ["/r/nope/x"], ["/r/k", "/r/nope/z"],
    ["-t", "/nope/a"], ["-t", "r/k"],
])
def test_rm(env: dict[str, str], args: list[str]) -> None:
    both_mutating(env, "rm", *args)


@pytest.mark.parametrize("args", [
    ["/r/a", "b0", "r3"], ["-r", "/r/a", "b0", "r3"], ["-u", "/r/a/b/c", "w2"],
    ["-u", "-r", "/r/a", "n0", "r1"], ["/r/a", "x0"], ["/r/a", ""], ["/r/nope", "b0"],
    ["/r/a", "b-1", "r4294967295", "r0x10", "rabc"], ["/r/a"], ["-u", "r/a", "b0"],
])
def test_chmod(env: dict[str, str], args: list[str]) -> None:
    both_mutating(env, "chmod", *args)


def _first_line(proc: subprocess.Popen, timeout: float = 15.0) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no initial watch event"
    return proc.stdout.readline()


@pytest.mark.timeout(60)
def test_watch_counts_initial_event(env: dict[str, str]) -> None:
    env = dict(env, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=REPO)
             for argv in (c_argv("watch", "-n", "3", "/wt", "/wu"),
                          our_argv("watch", "-n", "3", "/wt", "/wu"))]
    try:
        firsts = [_first_line(p) for p in procs]  # both registered
        with XsSyncClient.open(env["XENSTORED_PATH"]) as xs:
            xs.write("/wt/x", b"1")
            xs.write("/wt/y", b"2")
        results = [(p.wait(20), firsts[i] + p.stdout.read(), p.stderr.read())
                   for i, p in enumerate(procs)]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert results[0] == results[1]
    assert results[0] == (0, b"/wt\n/wu\n/wt/x\n", b"")


@pytest.mark.parametrize("args", [["-n", "0", "/a"], ["-n", "1", "//bad"], ["-n", "1", "/a"],
                                  ["-n"], ["-p", "/a"]])
def test_watch_edges(env: dict[str, str], args: list[str]) -> None:
    assert_same(both(env, "watch", *args))


def run_in_pty(argv: list[str], env: dict[str, str], cols: int) -> Result:
    """stdout on a terminal ``cols`` wide (output post-processing off)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen(argv, env=dict(env, PYTHONPATH=str(REPO)), stdout=slave,
                            stderr=subprocess.PIPE, cwd=REPO)
    os.close(slave)
    out = bytearray()
    try:
        while chunk := os.read(master, 65536):
            out += chunk
    except OSError:  # EIO: the terminal's last writer closed it
        pass
    finally:
        os.close(master)
    assert proc.stderr is not None
    return proc.wait(20), bytes(out), proc.stderr.read()


@pytest.mark.parametrize("cols", [0, 30, 100, 200])
@pytest.mark.parametrize("args", [["/t"], ["-p", "/t"], ["-f", "/t"]])
def test_ls_terminal_width(env: dict[str, str], cols: int, args: list[str]) -> None:
    c = run_in_pty(c_argv("ls", *args), env, cols)
    assert run_in_pty(our_argv("ls", *args), env, cols) == c
    assert c[0] == 0


# -- EAGAIN: a fake daemon fails the first commit ------------------------------
class EagainDaemon:
    """Answers like xenstored, but the first TRANSACTION_END "T" gets EAGAIN."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.log: list[tuple[int, int, bytes]] = []  # (type, tx_id, payload)
        self.failed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _reply(self, mtype: int, tx_id: int, payload: bytes) -> tuple[int, bytes]:
        self.log.append((mtype, tx_id, payload))
        if mtype == T.XS_TRANSACTION_START:
            return mtype, b"7\0"
        if mtype == T.XS_TRANSACTION_END and payload == b"T\0" and not self.failed:
            self.failed = True
            return T.XS_ERROR, b"EAGAIN\0"
        if mtype == T.XS_READ:
            return mtype, b"value of " + payload.rstrip(b"\0")
        return mtype, b"OK\0"

    def _serve(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            parser = FrameParser()
            with conn:
                while data := conn.recv(65536):
                    for msg in parser.feed(data):
                        rtype, body = self._reply(msg.type, msg.tx_id, msg.payload)
                        conn.sendall(encode(rtype, msg.req_id, msg.tx_id, body))


@pytest.mark.parametrize("mode, args", [
    ("read", ["-p", "/a", "/b"]), ("write", ["/a", r"x\ty", "/b", "2"]),
    ("rm", ["/a"]), ("chmod", ["/a", "b0"]), ("list", ["/a"]),
])
def test_eagain_retried_like_c(tmp_path: Path, mode: str, args: list[str]) -> None:
    logs, results = [], []
    for argv in (c_argv, our_argv):
        sock = tmp_path / f"fake-{argv.__name__}"
        fake = EagainDaemon(sock)
        results.append(run(argv(mode, *args), dict(os.environ, XENSTORED_PATH=str(sock))))
        logs.append(fake.log)
    assert results[1] == results[0]
    assert logs[1] == logs[0]  # same requests, in the same order, with the same tx_ids
    starts = [m for m in logs[0] if m[0] == T.XS_TRANSACTION_START]
    assert len(starts) == 2 and results[0][0] == 0


@pytest.mark.parametrize("mode, args", [("ls", ["/big"]), ("ls", ["-p", "/"]),
                                        ("list", ["-p", "/big"])])
def test_directory_over_4k_uses_directory_part(xenstored, mode: str, args: list[str]) -> None:
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        for i in range(300):
            xs.write(f"/big/child-with-a-longish-name-{i:04d}", b"")
    code, out, _ = assert_same(both(xenstored.client_env, mode, *args))
    assert code == 0 and out.count(b"child-with-a-longish-name-") == 300
