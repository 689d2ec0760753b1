"""Protocol error paths against the real daemon: EINVAL, ENOENT, EEXIST,
E2BIG and DIRECTORY_PART, ENOSYS, EBUSY (see ``test_protocol.py`` for the
conventions these tests follow)."""

from __future__ import annotations

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


from tests.xenstored.conftest import ev


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
    """cxenstored 4.17 is_valid_nodename: a path less a leading
    /local/domain/<domid>/ (any domain's) is at most XENSTORE_REL_PATH_MAX
    (2048) bytes, for every caller."""
    longest = "/" + "/".join(["x" * 99] * 31)[:2047]
    assert len(longest) == 2048 and not longest.endswith("/")
    c.write(longest, "deep")
    assert c.read(longest) == b"deep"
    assert c.err(XS_READ, nul(longest + "y")) == "EINVAL"
    assert c.err(XS_WRITE, (longest + "y").encode() + b"\0v") == "EINVAL"
    # a relative path is measured below the home it resolves to
    rel = "r" * 2048
    c.write(rel, "ok")
    assert c.read("/local/domain/0/" + rel) == b"ok"
    assert c.err(XS_WRITE, (rel + "r").encode() + b"\0v") == "EINVAL"
    # ... and so is an absolute path below any domain's home
    c.write("/local/domain/77/" + "s" * 2048, "ok")
    assert c.err(XS_WRITE, ("/local/domain/77/" + "s" * 2049).encode() + b"\0v") == "EINVAL"
    # but not below a domid of more than 5 characters (sscanf "%5u")
    assert c.err(XS_WRITE, ("/local/domain/123456/" + "s" * 2030).encode() + b"\0v") == "EINVAL"
    assert c.control("check") == b"OK\0"


@pytest.mark.parametrize("msg_type", [XS_WRITE, XS_MKDIR, XS_SET_PERMS, XS_WATCH])
@pytest.mark.parametrize("in_tx", [False, True])
def test_paths_of_2049_to_3072_bytes_are_einval(c, msg_type, in_tx):
    """The paths cxenstored refuses and ours took: nothing is
    created, and no watch (nor its initial event) is set."""
    tx = c.start() if in_tx else 0
    for n in (2049, 2500, 3072):
        path = "/" + "p" * (n - 1)
        payload = {XS_WRITE: path.encode() + b"\0v", XS_MKDIR: nul(path),
                   XS_SET_PERMS: nul(path, "n0"), XS_WATCH: nul(path, "t")}[msg_type]
        assert c.err(msg_type, payload, tx) == "EINVAL", n
        assert c.err(XS_READ, nul(path), tx) == "EINVAL", n
    if in_tx:
        assert c.end(tx) == "OK"
    assert c.directory("/") == [b"tool"]
    assert c.alive() and list(c.events) == []


def test_special_watch_paths_up_to_2048_bytes(c):
    c.watch("@" + "a" * 2047, "t")
    assert c.err(XS_WATCH, nul("@" + "a" * 2048, "t")) == "EINVAL"


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


@pytest.mark.parametrize("offset, rest", [
    (b"7", b"\0"), (b"100", b"\0"), (b"4294967295", b"\0"), (b"99999999999999999999", b"\0"),
    (b"-1", b"\0"), (b"x", b"aa\0bb\0\0"), (b"", b"aa\0bb\0\0"), (b"3x", b"bb\0\0"),
    (b" 3", b"bb\0\0"), (b"+3", b"bb\0\0"), (b"4294967299", b"bb\0\0"), (b"1", b"a\0bb\0\0"),
])
def test_directory_part_offset_is_atoi_never_refused(c, offset, rest):
    """cxenstored send_directory_part: atoi() of the offset (non-numeric is 0,
    the low 32 bits count), and an offset at or past the end answers an empty
    last chunk, so a client's listing loop ends as it would there."""
    c.write("/d/aa", "")
    c.write("/d/bb", "")
    gen = c.ok(XS_DIRECTORY_PART, nul("/d", "0")).split(b"\0")[0]
    assert c.ok(XS_DIRECTORY_PART, b"/d\0" + offset + b"\0") == gen + b"\0" + rest


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
    """EINVAL unless there are exactly two strings, as cxenstored counts them
    (xs_count_strings); the offset itself is never refused (see above)."""
    c.write("/d/aa", "")
    assert c.err(XS_DIRECTORY_PART, nul("/d")) == "EINVAL"
    assert c.err(XS_DIRECTORY_PART, nul("/d", "0", "0")) == "EINVAL"
    assert c.err(XS_DIRECTORY_PART, b"/d\0" + b"0") == "EINVAL"


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
