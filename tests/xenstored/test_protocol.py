"""The XenStore protocol against the real daemon process, over its Unix socket.

This file: basic operations, header echo, pipelining and framing; the
rest is in ``test_protocol_errors.py``, ``test_protocol_tx.py`` and
``test_protocol_watch.py`` (shared fixtures in ``conftest.py``).

Every message type and every error path a socket (dom0, privileged) client
can reach. Unprivileged semantics (permissions, quotas, event filtering)
are in ``test_protocol_unpriv.py`` at the core level. Spec:
``docs/misc/xenstore.txt`` and ``xen/include/public/io/xs_wire.h``; where
the spec is silent, cxenstored (``tools/xenstored/``) is the reference and
each such test says so.

"No event" assertions never sleep: after the action, the watcher does one
round trip of its own. The daemon queues an event for a watcher before it
answers the request that caused it, and a connection's messages leave in
order, so an event that exists arrives before the watcher's reply.
"""

from __future__ import annotations

import threading

import pytest

from tests.xenstored.rawclient import (
    XS_CONTROL,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_PERMS,
    XS_INTRODUCE,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESUME,
    XS_RM,
    XS_SET_FEATURE,
    XS_SET_PERMS,
    XS_SET_QUOTA,
    XS_SET_TARGET,
    XS_UNWATCH,
    XS_WATCH,
    XS_WRITE,
    RawClient,
    nul,
    pack,
)

pytestmark = pytest.mark.timeout(20)


# ======================================================================================
# Initial tree, basic operations
# ======================================================================================
def test_initial_tree(c):
    assert c.directory("/") == [b"tool"]
    assert c.directory("/tool") == [b"xenstored"]
    assert c.directory("/tool/xenstored") == []
    for p in ("/", "/tool", "/tool/xenstored"):
        assert c.read(p) == b""
        assert c.get_perms(p) == [b"n0"]
    assert c.control("check") == b"OK\0"


def test_write_read_roundtrip_binary_and_empty(c):
    value = bytes(range(256)) * 4
    c.write("/bin", value)
    assert c.read("/bin") == value
    c.write("/empty", b"")
    assert c.read("/empty") == b""
    c.write("/bin", b"short")  # overwrite shrinks
    assert c.read("/bin") == b"short"


def test_write_creates_parents_with_empty_values_and_parent_perms(c):
    c.set_perms("/tool", "r0", "w3")
    c.write("/tool/a/b/c", "v")
    assert c.read("/tool/a") == b"" and c.read("/tool/a/b") == b""
    assert c.read("/tool/a/b/c") == b"v"
    assert c.get_perms("/tool/a/b/c") == [b"r0", b"w3"]  # children inherit


def test_write_max_value(c):
    path = "/big"
    value = b"x" * (4096 - len(path) - 1)  # the whole payload is 4096
    c.write(path, value)
    assert c.read(path) == value


def test_mkdir_keeps_value_and_children(c):
    c.write("/m/child", "v")
    c.write("/m", "keep")
    c.mkdir("/m")
    assert c.read("/m") == b"keep"
    assert c.directory("/m") == [b"child"]
    c.mkdir("/m/new/deeper")
    assert c.directory("/m/new") == [b"deeper"]


def test_rm_recursive_and_absent_cases(c):
    c.write("/r/a/b", "1")
    c.write("/r/a/c", "2")
    c.rm("/r/a")
    assert c.directory("/r") == []
    assert c.err(XS_READ, nul("/r/a/b")) == "ENOENT"
    c.rm("/r/a")  # absent, parent exists: fine
    assert c.err(XS_RM, nul("/r/x/y")) == "ENOENT"  # parent absent too
    assert c.err(XS_RM, nul("/")) == "EINVAL"  # the root stays
    assert sorted(c.directory("/")) == [b"r", b"tool"]


def test_directory_lists_children_in_creation_order(c):
    names = [f"n{i}" for i in (5, 1, 9, 3)]
    for n in names:
        c.write(f"/order/{n}", "")
    assert c.directory("/order") == [n.encode() for n in names]


def test_set_get_perms_roundtrip(c):
    c.write("/p", "")
    c.set_perms("/p", "b7", "r0", "w3", "n9")
    assert c.get_perms("/p") == [b"b7", b"r0", b"w3", b"n9"]
    c.set_perms("/p", "n0")
    assert c.get_perms("/p") == [b"n0"]


def test_relative_paths_resolve_against_local_domain_0(c):
    c.write("rel/x", "hi")
    assert c.read("/local/domain/0/rel/x") == b"hi"
    assert c.read("rel/x") == b"hi"
    assert c.directory("rel") == [b"x"]
    c.set_perms("rel/x", "b0", "r1")
    assert c.get_perms("/local/domain/0/rel/x") == [b"b0", b"r1"]
    c.rm("rel")
    assert c.err(XS_READ, nul("/local/domain/0/rel/x")) == "ENOENT"


# ======================================================================================
# Header echo, pipelining, framing
# ======================================================================================
def test_reply_echoes_type_req_id_tx_id(c):
    for req_id in (0, 1, 0x7FFFFFFF, 0xFFFFFFFF):
        _echo(c, req_id)


def _echo(c, req_id):
    c.send(pack(XS_READ, nul("/tool"), req_id=req_id))
    m = c.recv_msg()
    assert (m.type, m.req_id, m.tx_id, m.payload) == (XS_READ, req_id, 0, b"")
    c.send(pack(XS_READ, nul("/nope"), req_id=req_id))
    m = c.recv_msg()
    assert (m.type, m.req_id, m.tx_id, m.payload) == (XS_ERROR, req_id, 0, b"ENOENT\0")
    tx = c.start()
    c.send(pack(XS_READ, nul("/tool"), req_id=req_id, tx_id=tx))
    m = c.recv_msg()
    assert (m.type, m.req_id, m.tx_id) == (XS_READ, req_id, tx)


def test_100_pipelined_requests_in_one_send_answered_in_order(c):
    reqs = []
    for i in range(100):
        kind = i % 4
        if kind == 0:
            reqs.append(pack(XS_WRITE, f"/pipe/{i}\0".encode() + str(i).encode(), req_id=1000 + i))
        elif kind == 1:
            reqs.append(pack(XS_READ, nul(f"/pipe/{i - 1}"), req_id=1000 + i))
        elif kind == 2:
            reqs.append(pack(XS_READ, nul("/nope"), req_id=1000 + i))
        else:
            reqs.append(pack(XS_GET_DOMAIN_PATH, nul(str(i)), req_id=1000 + i))
    c.send(b"".join(reqs))
    for i in range(100):
        m = c.recv_msg()
        assert m.req_id == 1000 + i
        kind = i % 4
        if kind == 0:
            assert (m.type, m.payload) == (XS_WRITE, b"OK\0")
        elif kind == 1:
            assert (m.type, m.payload) == (XS_READ, str(i - 1).encode())
        elif kind == 2:
            assert (m.type, m.payload) == (XS_ERROR, b"ENOENT\0")
        else:
            assert (m.type, m.payload) == (XS_GET_DOMAIN_PATH, f"/local/domain/{i}\0".encode())


def test_requests_split_byte_by_byte(c):
    stream = (pack(XS_WRITE, b"/split\0abc", req_id=1)
              + pack(XS_READ, nul("/split"), req_id=2)
              + pack(XS_DIRECTORY, nul("/"), req_id=3))
    for i in range(len(stream)):
        c.send(stream[i:i + 1])
    assert c.recv_msg().raw == pack(XS_WRITE, b"OK\0", req_id=1)
    assert c.recv_msg().raw == pack(XS_READ, b"abc", req_id=2)
    m = c.recv_msg()
    assert m.req_id == 3 and sorted(m.strings) == [b"split", b"tool"]


def test_zero_length_payloads(c):
    """Empty payloads where a string is required: EINVAL, never a hang."""
    for t in (XS_READ, XS_DIRECTORY, XS_GET_PERMS, XS_WRITE, XS_MKDIR, XS_RM, XS_SET_PERMS,
              XS_WATCH, XS_UNWATCH, XS_INTRODUCE, XS_RELEASE, XS_GET_DOMAIN_PATH,
              XS_IS_DOMAIN_INTRODUCED, XS_RESUME, XS_SET_TARGET, XS_DIRECTORY_PART,
              XS_SET_FEATURE, XS_SET_QUOTA, XS_CONTROL):
        assert c.err(t, b"") == "EINVAL", t
    assert c.alive()


def test_many_concurrent_clients(xenstored):
    """32 clients in threads, each writing, reading back and listing its own subtree."""
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with RawClient(xenstored.socket) as cl:
                for i in range(25):
                    cl.write(f"/conc/{n}/{i}", f"{n}:{i}")
                for i in range(25):
                    assert cl.read(f"/conc/{n}/{i}") == f"{n}:{i}".encode()
                assert len(cl.directory(f"/conc/{n}")) == 25
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not errors, errors[0]
    with RawClient(xenstored.socket) as cl:
        assert len(cl.directory("/conc")) == 32
        assert cl.control("check") == b"OK\0"
