"""The XenStore protocol against the real daemon process, over its Unix socket.

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
    XS_GET_FEATURE,
    XS_GET_PERMS,
    XS_GET_QUOTA,
    XS_INTRODUCE,
    XS_INVALID,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESTRICT,
    XS_RESUME,
    XS_RM,
    XS_SET_FEATURE,
    XS_SET_PERMS,
    XS_SET_QUOTA,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    RawClient,
    nul,
    pack,
)

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def c(xenstored):
    with RawClient(xenstored.socket) as client:
        yield client


@pytest.fixture
def connect(xenstored):
    opened = []

    def factory() -> RawClient:
        client = RawClient(xenstored.socket)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


def no_events(watcher: RawClient) -> None:
    """Round trip on ``watcher``: any event already due arrives first."""
    assert watcher.alive()
    assert list(watcher.events) == []


def ev(watcher: RawClient) -> tuple[bytes, bytes]:
    m = watcher.next_event()
    assert (m.type, m.req_id, m.tx_id) == (XS_WATCH_EVENT, 0, 0)
    path, token = m.strings
    return path, token


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


# ======================================================================================
# EINVAL: paths, strings, permissions, numbers
# ======================================================================================
BAD_PATHS = [
    b"", b"/a b", b"/a.b", b"/a\tb", b"/a*", b"/a:b", b"/\xc3\xa4", b"/a\xff", b"/a~",
    b"//", b"/a//b", b"//a", b"/a/", b"a/", b"/a/b/", b"@", b"@nope", b"@introduceDomainX",
]


@pytest.mark.parametrize("msg_type", [XS_READ, XS_WRITE, XS_MKDIR, XS_RM, XS_DIRECTORY,
                                      XS_GET_PERMS, XS_SET_PERMS, XS_DIRECTORY_PART])
def test_bad_path_is_einval(c, msg_type):
    for path in BAD_PATHS:
        if msg_type == XS_WRITE:
            payload = path + b"\0value"
        elif msg_type == XS_SET_PERMS:
            payload = path + b"\0b0\0"
        elif msg_type == XS_DIRECTORY_PART:
            payload = path + b"\0" + b"0\0"
        else:
            payload = path + b"\0"
        assert c.err(msg_type, payload) == "EINVAL", path
    assert c.directory("/") == [b"tool"]  # nothing was created


def test_bad_watch_paths_are_einval(c):
    for path in BAD_PATHS:
        if path.startswith(b"@") and len(path) > 1:
            continue  # any @<wspecial> may be watched (xenstore.txt), see below
        assert c.err(XS_WATCH, path + b"\0tok\0") == "EINVAL", path


@pytest.mark.parametrize("msg_type", [XS_READ, XS_WRITE, XS_MKDIR, XS_RM, XS_DIRECTORY])
def test_special_paths_only_for_watch_and_perms(c, msg_type):
    for path in (b"@introduceDomain", b"@releaseDomain"):
        payload = path + (b"\0v" if msg_type == XS_WRITE else b"\0")
        assert c.err(msg_type, payload) == "EINVAL", path


def test_path_length_limits(c):
    # absolute paths up to XENSTORE_ABS_PATH_MAX (3072) are fine
    longest = "/" + "/".join(["x" * 99] * 31)[:3071]
    assert len(longest) == 3072 and not longest.endswith("/")
    c.write(longest, "deep")
    assert c.read(longest) == b"deep"
    assert c.err(XS_READ, nul(longest + "y")) == "EINVAL"
    assert c.err(XS_WRITE, (longest + "y").encode() + b"\0v") == "EINVAL"
    # a relative path is measured once made absolute (/local/domain/0/...)
    rel = "r" * (3072 - len("/local/domain/0/"))
    c.write(rel, "ok")
    assert c.err(XS_WRITE, (rel + "r").encode() + b"\0v") == "EINVAL"
    assert c.control("check") == b"OK\0"


@pytest.mark.parametrize("msg_type", [XS_READ, XS_DIRECTORY, XS_GET_PERMS, XS_MKDIR, XS_RM])
def test_one_string_requests_need_exactly_one_final_nul(c, msg_type):
    for payload in (b"/tool", b"/tool\0\0", b"/tool\0x\0", b"/to\0ol", b"\0"):
        assert c.err(msg_type, payload) == "EINVAL", payload
    assert c.directory("/") == [b"tool"] and c.directory("/tool") == [b"xenstored"]


def test_write_without_nul_is_einval(c):
    assert c.err(XS_WRITE, b"/nonul") == "EINVAL"
    assert c.err(XS_READ, nul("/nonul")) == "ENOENT"


BAD_PERMS = [
    [b"x0"], [b"b"], [b"bx"], [b"b-1"], [b"b 1"], [b"B0"], [b"r0", b"q5"], [b""],
    [b"b65536"], [b"b99999999999"], [b"b0x5"], [b"b\xff"], [b"b0", b"r"],
]


def test_bad_perms_are_einval(c):
    c.write("/perm", "")
    for perms in BAD_PERMS:
        payload = b"/perm\0" + b"\0".join(perms) + b"\0"
        assert c.err(XS_SET_PERMS, payload) == "EINVAL", perms
    assert c.get_perms("/perm") == [b"n0"]  # unchanged


def test_set_perms_needs_a_path_and_a_perm(c):
    c.write("/perm", "")
    assert c.err(XS_SET_PERMS, nul("/perm")) == "EINVAL"
    assert c.err(XS_SET_PERMS, b"/perm\0b0") == "EINVAL"  # last perm not terminated


BAD_DOMIDS = [b"", b"abc", b"-1", b" 5", b"5 ", b"0x5", b"+5", b"5.0", b"99999999999",
              b"65536", b"\xff"]


@pytest.mark.parametrize("msg_type", [XS_GET_DOMAIN_PATH, XS_IS_DOMAIN_INTRODUCED, XS_RELEASE,
                                      XS_RESUME, XS_GET_FEATURE, XS_SET_FEATURE, XS_SET_TARGET])
def test_bad_domid_is_einval(c, msg_type):
    for num in BAD_DOMIDS:
        extra = b"0\0" if msg_type in (XS_SET_FEATURE, XS_SET_TARGET) else b""
        assert c.err(msg_type, num + b"\0" + extra) == "EINVAL", num


def test_introduce_bad_arguments(c):
    for args in ([b"abc", b"1", b"1"], [b"5", b"x", b"1"], [b"5", b"1", b"x"],
                 [b"-5", b"1", b"1"], [b"5", b"1"], [b"5"], [b"5", b"1", b"1", b"1"],
                 [b"70000", b"1", b"1"]):
        # (a negative <gfn> is not tested: xenstore.txt calls it "signed decimal")
        assert c.err(XS_INTRODUCE, b"\0".join(args) + b"\0") == "EINVAL", args
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, b"5\0") == b"F\0"


def test_introduce_dom0_is_einval(c):
    assert c.err(XS_INTRODUCE, nul("0", "1", "1")) == "EINVAL"


def test_release_dom0_is_einval(c):
    assert c.err(XS_RELEASE, nul("0")) == "EINVAL"


def test_watch_argument_errors(c):
    assert c.err(XS_WATCH, nul("/tool")) == "EINVAL"  # no token
    assert c.err(XS_WATCH, nul("/tool", "t", "1", "x")) == "EINVAL"  # 4 strings
    assert c.err(XS_WATCH, nul("/tool", "t", "x")) == "EINVAL"  # bad depth
    assert c.err(XS_WATCH, nul("/tool", "t", "-1")) == "EINVAL"
    assert c.err(XS_WATCH, b"/tool\0t") == "EINVAL"  # token not terminated
    assert c.err(XS_UNWATCH, nul("/tool")) == "EINVAL"
    assert c.err(XS_UNWATCH, nul("/a//b", "t")) == "EINVAL"


# ======================================================================================
# ENOENT
# ======================================================================================
def test_enoent_paths(c):
    for t in (XS_READ, XS_DIRECTORY, XS_GET_PERMS):
        assert c.err(t, nul("/nope")) == "ENOENT"
        assert c.err(t, nul("/tool/nope/deeper")) == "ENOENT"
    assert c.err(XS_SET_PERMS, nul("/nope", "b0")) == "ENOENT"
    assert c.err(XS_DIRECTORY_PART, nul("/nope", "0")) == "ENOENT"


def test_enoent_domains_and_watches(c):
    assert c.err(XS_UNWATCH, nul("/tool", "never")) == "ENOENT"
    assert c.err(XS_RELEASE, nul("5")) == "ENOENT"
    assert c.err(XS_RESUME, nul("5")) == "ENOENT"
    assert c.err(XS_SET_TARGET, nul("5", "6")) == "ENOENT"
    assert c.err(XS_GET_QUOTA, nul("5", "nodes")) == "ENOENT"
    assert c.err(XS_SET_QUOTA, nul("5", "nodes", "1")) == "ENOENT"
    assert c.err(XS_GET_FEATURE, nul("5")) == "ENOENT"
    assert c.err(XS_CONTROL, nul("quota", "5")) == "ENOENT"


def test_enoent_transactions(c):
    assert c.err(XS_TRANSACTION_END, nul("T")) == "ENOENT"  # tx_id 0
    assert c.err(XS_TRANSACTION_END, nul("T"), tx_id=42) == "ENOENT"
    assert c.err(XS_READ, nul("/tool"), tx_id=42) == "ENOENT"
    tx = c.start()
    assert c.end(tx) == "OK"
    for t, p in ((XS_READ, nul("/tool")), (XS_WRITE, b"/x\0v"), (XS_TRANSACTION_END, nul("F"))):
        assert c.err(t, p, tx_id=tx) == "ENOENT"  # stale
    assert c.err(XS_READ, nul("/x")) == "ENOENT"  # the stale write did nothing


def test_transactions_are_per_connection(connect):
    a, b = connect(), connect()
    tx = a.start()
    assert b.err(XS_READ, nul("/tool"), tx_id=tx) == "ENOENT"
    assert b.err(XS_TRANSACTION_END, nul("T"), tx_id=tx) == "ENOENT"
    assert a.end(tx) == "OK"


# ======================================================================================
# EEXIST, EISDIR, ENOTEMPTY
# ======================================================================================
def test_eexist_duplicate_watch(c):
    c.watch("/tool", "tok")
    assert ev(c) == (b"/tool", b"tok")
    assert c.err(XS_WATCH, nul("/tool", "tok")) == "EEXIST"
    c.watch("/tool", "tok2")  # another token is another watch
    c.watch("/tool/xenstored", "tok")  # another path too
    assert ev(c) == (b"/tool", b"tok2")
    assert ev(c) == (b"/tool/xenstored", b"tok")
    # relative and absolute spellings of one path are the same watch
    c.watch("rel", "r")
    assert ev(c) == (b"rel", b"r")
    assert c.err(XS_WATCH, nul("/local/domain/0/rel", "r")) == "EEXIST"


def test_eexist_reintroduce_with_different_mfn_or_port(c):
    c.introduce(5, 4096, 7)
    assert c.err(XS_INTRODUCE, nul("5", "8192", "7")) == "EEXIST"
    assert c.err(XS_INTRODUCE, nul("5", "4096", "8")) == "EEXIST"
    c.introduce(5, 4096, 7)  # the same again is harmless
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("5")) == b"T\0"


def test_no_eisdir_or_enotempty(c):
    """cxenstored never uses EISDIR/ENOTEMPTY: nodes are files and directories at
    once, and RM is recursive. Neither do we."""
    c.write("/dir/child", "c")
    c.write("/dir", "value of a node with children")
    assert c.read("/dir") == b"value of a node with children"
    c.rm("/dir")
    assert c.err(XS_READ, nul("/dir/child")) == "ENOENT"


# ======================================================================================
# E2BIG and DIRECTORY_PART
# ======================================================================================
def _fill_dir(c: RawClient, base: str, n: int) -> list[bytes]:
    names = [f"child-with-a-long-name-{i:05d}" for i in range(n)]
    c.send(b"".join(pack(XS_WRITE, f"{base}/{name}\0".encode(), req_id=i)
                    for i, name in enumerate(names)))
    for i in range(n):
        m = c.recv_msg()
        assert (m.type, m.req_id) == (XS_WRITE, i)
    return [n.encode() for n in names]


def _directory_part_all(c: RawClient, path: str, tx: int = 0) -> tuple[list[bytes], int, set]:
    """Page through DIRECTORY_PART as libxenstore does; (children, calls, gencnts)."""
    data = b""
    gens = set()
    calls = 0
    off = 0
    while True:
        reply = c.ok(XS_DIRECTORY_PART, nul(path, str(off)), tx)
        calls += 1
        assert len(reply) <= 4096
        gen, _, chunk = reply.partition(b"\0")
        assert gen.isdigit()
        gens.add(gen)
        if chunk == b"\0" or chunk.endswith(b"\0\0"):
            data += chunk[:-1]
            break
        assert chunk.endswith(b"\0") and chunk  # whole names only
        data += chunk
        off += len(chunk)
    return (data[:-1].split(b"\0") if data else []), calls, gens


def test_directory_e2big_then_directory_part_pages_completely(c):
    names = _fill_dir(c, "/big", 400)  # 400 * 29 bytes = 11600 > 4096
    assert sum(len(n) + 1 for n in names) > 2 * 4096
    assert c.err(XS_DIRECTORY, nul("/big")) == "E2BIG"
    got, calls, gens = _directory_part_all(c, "/big")
    assert got == names
    assert calls >= 3
    assert len(gens) == 1  # unchanged node: one generation count throughout


def test_directory_part_small_and_boundaries(c):
    c.write("/d/aa", "")
    c.write("/d/bb", "")
    reply = c.ok(XS_DIRECTORY_PART, nul("/d", "0"))
    gen, rest = reply.split(b"\0", 1)
    assert gen.isdigit() and rest == b"aa\0bb\0\0"
    assert c.ok(XS_DIRECTORY_PART, nul("/d", "3")) == gen + b"\0bb\0\0"
    assert c.ok(XS_DIRECTORY_PART, nul("/d", "6")) == gen + b"\0\0"  # exactly the end
    leaf = c.ok(XS_DIRECTORY_PART, nul("/d/aa", "0"))
    assert leaf.endswith(b"\0\0") and leaf.count(b"\0") == 2


def test_directory_part_gencnt_changes_with_the_node(c):
    c.write("/g/a", "")
    g1 = c.ok(XS_DIRECTORY_PART, nul("/g", "0")).split(b"\0")[0]
    assert c.ok(XS_DIRECTORY_PART, nul("/g", "0")).split(b"\0")[0] == g1
    c.write("/g/b", "")
    g2 = c.ok(XS_DIRECTORY_PART, nul("/g", "0")).split(b"\0")[0]
    assert g2 != g1
    c.rm("/g/a")
    g3 = c.ok(XS_DIRECTORY_PART, nul("/g", "0")).split(b"\0")[0]
    assert g3 not in (g1, g2)


def test_directory_part_gencnt_inside_transaction(c):
    """A node created in a transaction has a real <gencnt> (not NO_GENERATION), and a
    child list changed in the transaction a new one (xenstore.txt: the same <gencnt>
    guarantees the node has not changed)."""
    tx = c.start()
    c.write("/newdir/a", "", tx=tx)
    gen_new, rest = c.ok(XS_DIRECTORY_PART, nul("/newdir", "0"), tx).split(b"\0", 1)
    assert rest == b"a\0\0"
    assert gen_new.isdigit(), f"gencnt {gen_new!r}"
    outside = c.ok(XS_DIRECTORY_PART, nul("/tool", "0"), tx)
    c.write("/tool/b", "", tx=tx)
    inside = c.ok(XS_DIRECTORY_PART, nul("/tool", "0"), tx)
    assert inside.split(b"\0", 1)[1] == b"xenstored\0b\0\0"
    assert inside.split(b"\0")[0] != outside.split(b"\0")[0]


def test_directory_part_argument_errors(c):
    """Ours: EINVAL for a non-number or an offset past the end. cxenstored
    (send_directory_part) uses atoi (garbage = 0) and answers an empty list
    past the end; libxenstore never sends either."""
    c.write("/d/aa", "")
    assert c.err(XS_DIRECTORY_PART, nul("/d")) == "EINVAL"
    assert c.err(XS_DIRECTORY_PART, nul("/d", "0", "0")) == "EINVAL"
    assert c.err(XS_DIRECTORY_PART, b"/d\0" + b"0") == "EINVAL"
    assert c.err(XS_DIRECTORY_PART, nul("/d", "x")) == "EINVAL"
    assert c.err(XS_DIRECTORY_PART, nul("/d", "100")) == "EINVAL"


def test_directory_part_inside_transaction_sees_its_own_children(c):
    names = _fill_dir(c, "/tp", 200)
    tx = c.start()
    c.write("/tp/zz-in-tx", "", tx=tx)
    got, _, _ = _directory_part_all(c, "/tp", tx)
    assert got == names + [b"zz-in-tx"]
    got_outside, _, _ = _directory_part_all(c, "/tp")
    assert got_outside == names
    assert c.end(tx, commit=False) == "OK"


# ======================================================================================
# ENOSYS, EBUSY
# ======================================================================================
def test_enosys_unknown_and_server_only_types(c):
    tx = c.start()
    for msg_type in (XS_WATCH_EVENT, XS_ERROR, XS_RESTRICT, 27, 28, 100, 0xFFFE, XS_INVALID,
                     0x10000, 0x7FFFFFFF, 0xFFFFFFFF):
        for payload in (b"", b"/tool\0", b"EINVAL\0"):
            assert c.err(msg_type, payload) == "ENOSYS", (msg_type, payload)
        assert c.err(msg_type, b"x\0", tx_id=tx) == "ENOSYS", msg_type
        assert c.err(msg_type, b"x\0", tx_id=tx + 77) == "ENOSYS", msg_type
    assert c.end(tx) == "OK"


def test_ebusy_transaction_start_with_nonzero_tx_id(c):
    tx = c.start()
    assert c.err(XS_TRANSACTION_START, b"\0", tx_id=tx) == "EBUSY"
    # an unknown tx_id is looked up first, as cxenstored's transaction_lookup does
    assert c.err(XS_TRANSACTION_START, b"\0", tx_id=tx + 1000) == "ENOENT"
    assert c.end(tx) == "OK"


def test_transaction_ids_are_unique_and_nonzero(c):
    ids = [c.start() for _ in range(20)]
    assert 0 not in ids and len(set(ids)) == 20
    for tx in ids:
        assert c.end(tx, commit=False) == "OK"


# ======================================================================================
# Transactions: isolation and EAGAIN
# ======================================================================================
def test_transaction_isolation(connect):
    a, b = connect(), connect()
    a.write("/iso/base", "0")
    tx = a.start()
    a.write("/iso/base", "1", tx=tx)
    a.write("/iso/new/deep", "n", tx=tx)
    a.rm("/tool/xenstored", tx=tx)
    # inside: own changes
    assert a.read("/iso/base", tx=tx) == b"1"
    assert a.read("/iso/new/deep", tx=tx) == b"n"
    assert a.directory("/tool", tx=tx) == []
    # outside (other connection, and the same connection without tx_id): old state
    for cl in (a, b):
        assert cl.read("/iso/base") == b"0"
        assert cl.err(XS_READ, nul("/iso/new")) == "ENOENT"
        assert cl.directory("/tool") == [b"xenstored"]
    # another transaction sees the old state too
    tx2 = b.start()
    assert b.read("/iso/base", tx=tx2) == b"0"
    assert b.end(tx2, commit=False) == "OK"
    assert a.end(tx) == "OK"
    for cl in (a, b):
        assert cl.read("/iso/base") == b"1"
        assert cl.read("/iso/new/deep") == b"n"
        assert cl.directory("/tool") == []
    assert a.control("check") == b"OK\0"


def test_transaction_abort_discards_everything(c):
    c.write("/ab", "keep")
    tx = c.start()
    c.write("/ab", "changed", tx=tx)
    c.write("/ab/child", "x", tx=tx)
    c.set_perms("/ab", "b3", tx=tx)
    assert c.end(tx, commit=False) == "OK"
    assert c.read("/ab") == b"keep"
    assert c.directory("/ab") == []
    assert c.get_perms("/ab") == [b"n0"]


def test_transaction_create_then_delete_inside(c):
    tx = c.start()
    c.write("/cd/a/b", "x", tx=tx)
    c.rm("/cd/a", tx=tx)
    assert c.directory("/cd", tx=tx) == []
    assert c.end(tx) == "OK"
    assert c.directory("/cd") == []
    assert c.control("check") == b"OK\0"


def test_eagain_example_1_read_a_write_b_commits(connect):
    """cxenstored transaction.c example 1: no interference, commit succeeds."""
    c = connect()
    c.write("/A", "a")
    c.write("/B", "b")
    tx = c.start()
    assert c.read("/A", tx=tx) == b"a"
    c.write("/B", "b1", tx=tx)
    assert c.end(tx) == "OK"
    assert c.read("/B") == b"b1"


def test_eagain_example_2_conflicting_write(connect):
    c, other = connect(), connect()
    c.write("/A", "a")
    c.write("/B", "b")
    tx = c.start()
    assert c.read("/A", tx=tx) == b"a"
    other.write("/A", "a-outside")
    c.write("/B", "b1", tx=tx)
    assert c.end(tx) == "EAGAIN"
    assert c.read("/B") == b"b"  # nothing applied
    assert c.read("/A") == b"a-outside"
    assert c.err(XS_READ, nul("/A"), tx_id=tx) == "ENOENT"  # the transaction is gone


def test_eagain_example_3_conflicting_delete(connect):
    c, other = connect(), connect()
    c.write("/A", "a")
    c.write("/B", "b")
    tx = c.start()
    assert c.read("/A", tx=tx) == b"a"
    other.rm("/A")
    c.write("/B", "b1", tx=tx)
    assert c.end(tx) == "EAGAIN"
    assert c.read("/B") == b"b"


def test_eagain_example_4_two_interfering_transactions(connect):
    c1, c2 = connect(), connect()
    c1.write("/A", "a")
    c1.write("/B", "b")
    t1 = c1.start()
    t2 = c2.start()
    assert c1.read("/A", tx=t1) == b"a"
    assert c2.read("/B", tx=t2) == b"b"
    c1.write("/B", "from-1", tx=t1)
    c2.write("/A", "from-2", tx=t2)
    assert c1.end(t1) == "OK"
    assert c2.end(t2) == "EAGAIN"
    assert c1.read("/A") == b"a"
    assert c1.read("/B") == b"from-1"


def test_eagain_read_of_absent_node_then_created(connect):
    c, other = connect(), connect()
    tx = c.start()
    assert c.err(XS_READ, nul("/later"), tx_id=tx) == "ENOENT"
    other.write("/later", "x")
    c.write("/mine", "y", tx=tx)
    assert c.end(tx) == "EAGAIN"
    assert c.err(XS_READ, nul("/mine")) == "ENOENT"


def test_retry_after_eagain_succeeds(connect):
    c, other = connect(), connect()
    c.write("/ctr", "0")
    for attempt in range(3):
        tx = c.start()
        v = int(c.read("/ctr", tx=tx))
        if attempt == 0:
            other.write("/ctr", "10")
        c.write("/ctr", str(v + 1), tx=tx)
        if c.end(tx) == "OK":
            break
    assert attempt == 1
    assert c.read("/ctr") == b"11"


# ======================================================================================
# Watches
# ======================================================================================
def test_watch_initial_event_then_write_modify_delete_perms(connect):
    w, c = connect(), connect()
    w.watch("/w", "tok")  # the node need not exist
    assert ev(w) == (b"/w", b"tok")
    c.write("/w", "1")
    assert ev(w) == (b"/w", b"tok")
    c.write("/w/child", "2")
    assert ev(w) == (b"/w/child", b"tok")
    c.write("/w/child", "3")  # modify
    assert ev(w) == (b"/w/child", b"tok")
    c.set_perms("/w/child", "b0", "r4")  # permission change
    assert ev(w) == (b"/w/child", b"tok")
    c.rm("/w/child")  # delete
    assert ev(w) == (b"/w/child", b"tok")
    c.mkdir("/w/dir")  # creation by mkdir
    assert ev(w) == (b"/w/dir", b"tok")
    c.mkdir("/w/dir")  # existing: no change, no event (as cxenstored)
    no_events(w)


def test_watch_prefix_match_is_by_path_component(connect):
    w, c = connect(), connect()
    w.watch("/pre", "t")
    ev(w)
    c.write("/prefix", "not a child")
    c.write("/pr", "not a child either")
    c.write("/other/pre", "nor this")
    no_events(w)
    c.write("/pre/a/b/c", "deep child")
    assert ev(w) == (b"/pre/a/b/c", b"t")


def test_watch_on_root_sees_everything(connect):
    w, c = connect(), connect()
    w.watch("/", "all")
    assert ev(w) == (b"/", b"all")
    c.write("/x/y", "")
    assert ev(w) == (b"/x/y", b"all")
    c.rm("/x")
    assert ev(w) == (b"/x", b"all")


def test_recursive_rm_reports_the_watched_path(connect):
    """xenstore.txt: on recursive removal of a parent of <wpath>, <epath> is <wpath>."""
    w, c = connect(), connect()
    c.write("/rr/a/b/c", "v")
    w.watch("/rr/a/b/c", "deep")
    w.watch("/rr", "top")
    assert ev(w) == (b"/rr/a/b/c", b"deep")
    assert ev(w) == (b"/rr", b"top")
    c.rm("/rr/a")
    got = {ev(w), ev(w)}
    assert got == {(b"/rr/a/b/c", b"deep"), (b"/rr/a", b"top")}
    no_events(w)


def test_write_fires_parent_watches_and_not_siblings(connect):
    w, c = connect(), connect()
    w.watch("/s/a", "a")
    w.watch("/s/b", "b")
    ev(w), ev(w)
    c.write("/s/a/x", "")
    assert ev(w) == (b"/s/a/x", b"a")
    no_events(w)


def test_two_tokens_same_path_two_events(connect):
    w, c = connect(), connect()
    w.watch("/tt", "one")
    w.watch("/tt", "two")
    ev(w), ev(w)
    c.write("/tt", "")
    assert {ev(w), ev(w)} == {(b"/tt", b"one"), (b"/tt", b"two")}


def test_every_watching_connection_gets_the_event(connect):
    watchers = [connect() for _ in range(5)]
    for i, w in enumerate(watchers):
        w.watch("/multi", f"w{i}")
        assert ev(w) == (b"/multi", f"w{i}".encode())
    connect().write("/multi/x", "")
    for i, w in enumerate(watchers):
        assert ev(w) == (b"/multi/x", f"w{i}".encode())


def test_own_writes_fire_own_watches_after_the_reply(c):
    c.watch("/own", "t")
    ev(c)
    c.send(pack(XS_WRITE, b"/own\0v", req_id=77))
    assert c.recv_msg().raw == pack(XS_WRITE, b"OK\0", req_id=77)
    m = c.recv_msg()
    assert m.type == XS_WATCH_EVENT and m.strings == [b"/own", b"t"]


def test_transaction_fires_on_commit_only(connect):
    w, c = connect(), connect()
    w.watch("/txw", "t")
    ev(w)
    tx = c.start()
    c.write("/txw/a", "1", tx=tx)
    c.write("/txw/b", "2", tx=tx)
    no_events(w)
    assert c.end(tx) == "OK"
    assert {ev(w), ev(w)} == {(b"/txw/a", b"t"), (b"/txw/b", b"t")}
    no_events(w)


def test_aborted_or_failed_transaction_fires_nothing(connect):
    w, c, other = connect(), connect(), connect()
    w.watch("/txa", "t")
    ev(w)
    tx = c.start()
    c.write("/txa/a", "1", tx=tx)
    assert c.end(tx, commit=False) == "OK"
    no_events(w)
    tx = c.start()
    c.read("/tool", tx=tx)
    c.write("/txa/b", "1", tx=tx)
    other.write("/tool", "conflict")
    assert c.end(tx) == "EAGAIN"
    no_events(w)


def test_relative_watch_gets_relative_paths(connect):
    w, c = connect(), connect()
    w.watch("relw", "r")
    assert ev(w) == (b"relw", b"r")
    c.write("/local/domain/0/relw/x", "")
    assert ev(w) == (b"relw/x", b"r")
    w.watch("/local/domain/0/relw", "abs")
    assert ev(w) == (b"/local/domain/0/relw", b"abs")
    c.write("relw/y", "")
    assert {ev(w), ev(w)} == {(b"relw/y", b"r"), (b"/local/domain/0/relw/y", b"abs")}


def test_unwatch_stops_events(connect):
    w, c = connect(), connect()
    w.watch("/uw", "t")
    w.watch("/uw", "keep")
    ev(w), ev(w)
    w.unwatch("/uw", "t")
    c.write("/uw", "")
    assert ev(w) == (b"/uw", b"keep")
    no_events(w)
    assert w.err(XS_UNWATCH, nul("/uw", "t")) == "ENOENT"


def test_unwatch_relative_spelling(c):
    c.watch("relu", "t")
    ev(c)
    c.unwatch("/local/domain/0/relu", "t")
    assert c.err(XS_UNWATCH, nul("relu", "t")) == "ENOENT"


def test_reset_watches_drops_watches_and_transactions(connect):
    w, c = connect(), connect()
    w.watch("/rw", "t")
    w.watch("@introduceDomain", "i")
    ev(w), ev(w)
    tx = w.start()
    w.write("/rw/in-tx", "", tx=tx)
    assert w.ok(XS_RESET_WATCHES, b"\0") == b"OK\0"
    c.write("/rw", "")
    c.introduce(5)
    no_events(w)
    assert w.err(XS_READ, nul("/tool"), tx_id=tx) == "ENOENT"
    assert w.err(XS_TRANSACTION_END, nul("T"), tx_id=tx) == "ENOENT"
    assert c.err(XS_READ, nul("/rw/in-tx")) == "ENOENT"
    w.watch("/rw", "t")  # and may be registered again
    assert ev(w) == (b"/rw", b"t")


def test_watches_end_with_their_connection(xenstored, connect):
    w = connect()
    w.watch("/gone", "t")
    ev(w)
    w.close()
    c = connect()
    c.watch("/gone", "mine")
    ev(c)
    c.write("/gone", "")
    assert ev(c) == (b"/gone", b"mine")
    no_events(c)


def test_watch_depth(connect):
    w, c = connect(), connect()
    w.watch("/dp", "d0", depth=0)
    w.watch("/dp", "d1", depth=1)
    w.watch("/dp", "d2", depth=2)
    for _ in range(3):
        ev(w)
    c.write("/dp", "")
    assert {ev(w), ev(w), ev(w)} == {(b"/dp", b"d0"), (b"/dp", b"d1"), (b"/dp", b"d2")}
    c.write("/dp/a", "")
    assert {ev(w), ev(w)} == {(b"/dp/a", b"d1"), (b"/dp/a", b"d2")}
    c.write("/dp/a/b", "")
    assert ev(w) == (b"/dp/a/b", b"d2")
    c.write("/dp/a/b/c", "")
    no_events(w)


def test_introduce_and_release_fire_special_watches(connect):
    w, c = connect(), connect()
    w.watch("@introduceDomain", "in")
    w.watch("@releaseDomain", "out")
    w.watch("@introduceDomain", "in1", depth=1)
    w.watch("@releaseDomain", "out1", depth=1)
    for _ in range(4):
        ev(w)
    c.introduce(5, 4096, 7)
    assert {ev(w), ev(w)} == {(b"@introduceDomain", b"in"), (b"@introduceDomain/5", b"in1")}
    no_events(w)
    c.introduce(5, 4096, 7)  # a harmless repeat is no new domain
    no_events(w)
    c.release(5)
    assert {ev(w), ev(w)} == {(b"@releaseDomain", b"out"), (b"@releaseDomain/5", b"out1")}
    no_events(w)
    assert c.err(XS_RELEASE, nul("5")) == "ENOENT"  # second release: nothing fires
    no_events(w)


def test_ordinary_writes_do_not_fire_special_watches(connect):
    w, c = connect(), connect()
    w.watch("@introduceDomain", "in")
    w.watch("@releaseDomain", "out")
    ev(w), ev(w)
    c.write("/local/domain/5/x", "")
    c.rm("/local/domain/5")
    no_events(w)


def test_watch_release_of_one_domain(connect):
    w, c = connect(), connect()
    w.watch("@releaseDomain/6", "six")
    assert ev(w) == (b"@releaseDomain/6", b"six")
    c.introduce(5)
    c.introduce(6)
    c.release(5)
    no_events(w)
    c.release(6)
    assert ev(w) == (b"@releaseDomain/6", b"six")


def test_release_removes_the_domains_nodes_and_keeps_dom0s(c):
    """XSA-419: nodes owned by a released domain go with it."""
    c.introduce(5)
    c.write("/local/domain/5/owned", "x")
    c.set_perms("/local/domain/5/owned", "b5")
    c.write("/local/domain/5/dom0s", "y")
    c.release(5)
    assert c.err(XS_READ, nul("/local/domain/5/owned")) == "ENOENT"
    assert c.read("/local/domain/5/dom0s") == b"y"
    assert c.control("check") == b"OK\0"


# ======================================================================================
# Domains
# ======================================================================================
def test_is_domain_introduced_and_get_domain_path(c):
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("0")) == b"T\0"  # dom0 is always there
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("7")) == b"F\0"
    c.introduce(7)
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("7")) == b"T\0"
    c.release(7)
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("7")) == b"F\0"
    for domid in (0, 1, 7, 32752, 65535):
        assert c.ok(XS_GET_DOMAIN_PATH, nul(str(domid))) == f"/local/domain/{domid}\0".encode()
    # introduced or not: the path is computed, not looked up; <domid> is normalised
    assert c.ok(XS_GET_DOMAIN_PATH, nul("123")) == b"/local/domain/123\0"
    assert c.ok(XS_GET_DOMAIN_PATH, nul("007")) == b"/local/domain/7\0"


def test_resume(c):
    c.introduce(8)
    assert c.ok(XS_RESUME, nul("8")) == b"OK\0"
    assert c.ok(XS_RESUME, nul("8")) == b"OK\0"
    assert c.err(XS_RESUME, nul("9")) == "ENOENT"
    assert c.err(XS_RESUME, nul("8", "9")) == "EINVAL"


def test_set_target(c):
    c.introduce(5)
    c.introduce(6)
    assert c.ok(XS_SET_TARGET, nul("5", "6")) == b"OK\0"
    assert c.err(XS_SET_TARGET, nul("5", "9")) == "ENOENT"
    assert c.err(XS_SET_TARGET, nul("9", "5")) == "ENOENT"
    assert c.err(XS_SET_TARGET, nul("5")) == "EINVAL"
    assert c.err(XS_SET_TARGET, nul("5", "x")) == "EINVAL"


def test_introduce_release_introduce_again(c):
    for _ in range(3):
        c.introduce(5, 4096, 7)
        assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("5")) == b"T\0"
        c.release(5)
        assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("5")) == b"F\0"
    c.introduce(5, 8192, 9)  # a new incarnation may bring a new page and port
    assert c.control("check") == b"OK\0"


# ======================================================================================
# Features, quotas, control
# ======================================================================================
def test_get_feature(c):
    feats = int(c.ok(XS_GET_FEATURE, b"")[:-1])
    assert feats & 4, "XENSTORE_SERVER_FEATURE_WATCHDEPTH: the daemon supports WATCH depth"
    assert feats & ~0xF == 0
    c.introduce(5)
    dom = int(c.ok(XS_GET_FEATURE, nul("5"))[:-1])
    assert dom & ~feats == 0
    assert c.err(XS_GET_FEATURE, nul("5", "6")) == "EINVAL"
    assert c.err(XS_GET_FEATURE, nul("x")) == "EINVAL"


def test_set_feature_argument_errors(c):
    c.introduce(5)
    assert c.err(XS_SET_FEATURE, nul("5")) == "EINVAL"
    assert c.err(XS_SET_FEATURE, nul("5", "x")) == "EINVAL"
    assert c.err(XS_SET_FEATURE, nul("5", str(1 << 20))) == "EINVAL"  # not offered
    # before INTRODUCE the toolstack may set a domain's features (xenstore.txt)
    assert c.ok(XS_SET_FEATURE, nul("9", "0")) == b"OK\0"
    assert c.ok(XS_GET_FEATURE, nul("9")) == b"0\0"


def test_get_set_quota(c):
    names = c.ok(XS_GET_QUOTA, b"")[:-1].split(b" ")
    assert {b"nodes", b"watches", b"transactions", b"node-size", b"node-permissions",
            b"path-max", b"transaction-nodes"} <= set(names)
    defaults = {b"nodes": 1000, b"watches": 128, b"transactions": 10, b"node-size": 2048,
                b"node-permissions": 5, b"path-max": 2048, b"transaction-nodes": 1024}
    for name, value in defaults.items():
        assert c.ok(XS_GET_QUOTA, name + b"\0") == str(value).encode() + b"\0"
    assert c.ok(XS_SET_QUOTA, nul("nodes", "1234")) == b"OK\0"
    assert c.ok(XS_GET_QUOTA, nul("nodes")) == b"1234\0"
    # a domain introduced now starts from the global values ...
    c.introduce(5)
    assert c.ok(XS_GET_QUOTA, nul("5", "nodes")) == b"1234\0"
    # ... and may get its own
    assert c.ok(XS_SET_QUOTA, nul("5", "nodes", "7")) == b"OK\0"
    assert c.ok(XS_GET_QUOTA, nul("5", "nodes")) == b"7\0"
    assert c.ok(XS_GET_QUOTA, nul("nodes")) == b"1234\0"
    # errors
    assert c.err(XS_GET_QUOTA, nul("no-such")) == "EINVAL"
    assert c.err(XS_GET_QUOTA, nul("5", "nodes", "x")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("nodes")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("nodes", "x")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("no-such", "1")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("5", "no-such", "1")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("1", "2", "3", "4")) == "EINVAL"


def test_quota_does_not_limit_dom0(c):
    assert c.ok(XS_SET_QUOTA, nul("nodes", "1")) == b"OK\0"
    assert c.ok(XS_SET_QUOTA, nul("watches", "1")) == b"OK\0"
    assert c.ok(XS_SET_QUOTA, nul("transactions", "1")) == b"OK\0"
    for i in range(5):
        c.write(f"/q/{i}", "x" * 3000)
        c.watch(f"/q/{i}", "t")
    txs = [c.start() for _ in range(5)]
    for tx in txs:
        assert c.end(tx) == "OK"


def test_control_commands(c):
    assert c.control("check") == b"OK\0"
    help_text = c.control("help")
    for cmd in (b"check", b"log", b"quota", b"help"):
        assert cmd in help_text
    assert c.control("log", "on") == b"OK\0"
    assert c.control("log") == b"on\0"
    assert c.control("log", "off") == b"OK\0"
    assert c.control("log") == b"off\0"
    assert c.err(XS_CONTROL, nul("log", "maybe")) == "EINVAL"
    shown = c.control("quota")
    assert b"nodes: 1000" in shown and b"watches: 128" in shown
    assert c.control("quota", "set", "nodes", "999") == b"OK\0"
    assert c.ok(XS_GET_QUOTA, nul("nodes")) == b"999\0"
    c.introduce(5)
    assert b"nodes: 999" in c.control("quota", "5")
    assert c.err(XS_CONTROL, nul("quota", "set", "nodes")) == "EINVAL"
    assert c.err(XS_CONTROL, nul("quota", "set", "bogus", "1")) == "EINVAL"
    assert c.err(XS_CONTROL, nul("no-such-command")) == "EINVAL"
    assert c.err(XS_CONTROL, b"check") == "EINVAL"  # not nul-terminated


def test_control_ignores_tx_id(c):
    """Ours treats CONTROL as XS_FLAG_NOTID: a bogus tx_id is echoed, not looked up.
    (cxenstored's wire_funcs give CONTROL no NOTID flag: it answers ENOENT.)"""
    reply = c.call(XS_CONTROL, nul("check"), tx_id=99)
    assert (reply.type, reply.payload) == (XS_CONTROL, b"OK\0")


def test_watch_any_special_path_is_accepted(connect):
    w, c = connect(), connect()
    w.watch("@someOtherEvent", "t")
    assert ev(w) == (b"@someOtherEvent", b"t")
    c.introduce(5)
    c.release(5)
    no_events(w)
