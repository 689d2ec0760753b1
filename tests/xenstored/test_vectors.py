"""Golden byte vectors (tests/vectors/xs_wire/messages.json), both directions.

Two checks per vector:

* codec: ``libxen.xenstore.wire`` encodes the documented fields to exactly
  the vector's bytes and decodes the bytes back to the same fields, and
  ``hypervisord.public.io.xs_wire`` names the type as the vector does;
* replay: a fresh daemon process, sent the vector's request bytes over its
  socket, answers with exactly the vector's reply bytes (and the watch
  events that must follow), in order and nothing in between.

The vectors were written from the spec (see the file's "about"); where our
daemon disagrees with one, the vector stays and the test is marked xfail
with the reason (a daemon bug to fix), never the other way round.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hypervisord.public.io.xs_wire import XSD_ERRORS, XSD_SOCKMSG, XsdSockmsgType
from tests.xenstored.rawclient import RawClient, pack
from libxen.xenstore.wire import (
    FrameParser,
    Message,
    ProtocolError,
    decode_header,
    encode,
    encode_message,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "xs_wire" / "messages.json").read_text()
)

#: vector name -> why our daemon fails it (each is a daemon bug: strict xfail)
DAEMON_BUGS: dict[str, str] = {}


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def payload_of(m: dict) -> bytes:
    return m["payload"].encode("latin-1")


def exact_messages():
    """Every message of the file given as exact bytes: (id, message dict)."""
    for h in VECTORS["server_messages"]:
        yield f"server:{h['name']}", h["message"]
    for v in VECTORS["messages"]:
        for i, ex in enumerate([*v["setup"], v["exchange"]]):
            for role, m in [("request", ex["request"]), ("reply", ex["reply"]),
                            *[("event", e) for e in ex["events"]]]:
                if "hex" in m:
                    yield f"{v['name']}:{i}:{role}", m


EXACT = list(exact_messages())


# -- the file itself --------------------------------------------------------------
@pytest.mark.timeout(10)
def test_every_message_type_has_a_vector_both_directions():
    requested = {v["exchange"]["request"]["type"] for v in VECTORS["messages"]}
    replied = {v["exchange"]["reply"]["type"] for v in VECTORS["messages"]}
    for t in range(27):
        assert t in requested, f"no request vector for type {t}"
    # every type a client may send (all but WATCH_EVENT, ERROR, RESTRICT) has a
    # successful reply of its own type somewhere in the file
    ok_types = {ex["reply"]["type"] for v in VECTORS["messages"]
                for ex in [*v["setup"], v["exchange"]]}
    for t in set(range(27)) - {15, 16, 20}:
        assert t in ok_types, f"no reply vector of type {t}"
    assert 16 in replied  # XS_ERROR
    events = [e for v in VECTORS["messages"] for e in v["exchange"]["events"]]
    assert events and all(e["type"] == 15 for e in events)
    errs = {m["message"]["payload"][:-1] for m in VECTORS["server_messages"] if m["message"]["type"] == 16}
    assert errs == {name for _, name in XSD_ERRORS}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("h", VECTORS["headers"], ids=lambda h: h["name"])
def test_header_vector(h):
    raw = hexbytes(h["hex"])
    assert len(raw) == XSD_SOCKMSG.size == 16
    assert decode_header(raw) == (h["type"], h["req_id"], h["tx_id"], h["len"])
    assert XSD_SOCKMSG.pack(h["type"], h["req_id"], h["tx_id"], h["len"]) == raw


@pytest.mark.timeout(10)
@pytest.mark.parametrize("m", [m for _, m in EXACT], ids=[i for i, _ in EXACT])
def test_codec_vector(m):
    raw = hexbytes(m["hex"])
    payload = payload_of(m)
    # the type number and its ABI name agree
    if m["type"] in XsdSockmsgType._value2member_map_:
        assert XsdSockmsgType(m["type"]).name == m["type_name"]
    # encode
    assert encode(m["type"], m["req_id"], m["tx_id"], payload) == raw
    assert encode_message(Message(m["type"], m["req_id"], m["tx_id"], payload)) == raw
    # decode: header, then the whole message, also fed one byte at a time
    assert decode_header(raw) == (m["type"], m["req_id"], m["tx_id"], len(payload))
    assert FrameParser().feed(raw) == [Message(m["type"], m["req_id"], m["tx_id"], payload)]
    parser = FrameParser()
    got = []
    for i in range(len(raw)):
        got += parser.feed(raw[i:i + 1])
        if i < len(raw) - 1:
            assert got == []
    assert got == [Message(m["type"], m["req_id"], m["tx_id"], payload)]
    assert parser.pending == 0


@pytest.mark.timeout(10)
def test_codec_all_vectors_in_one_stream():
    """The whole file's messages back to back, cut at awkward places."""
    raws = [hexbytes(m["hex"]) for _, m in EXACT]
    stream = b"".join(raws)
    for step in (1, 3, 7, 16, 17, 4096, len(stream)):
        parser = FrameParser()
        got = []
        for i in range(0, len(stream), step):
            got += parser.feed(stream[i:i + step])
        assert [encode_message(g) for g in got] == raws


@pytest.mark.timeout(10)
def test_codec_rejects_len_over_payload_max():
    parser = FrameParser()
    with pytest.raises(ProtocolError):
        parser.feed(hexbytes("02000000 01000000 00000000 01100000"))  # len 4097
    with pytest.raises(ProtocolError):  # and stays broken (XSA-420)
        parser.feed(pack(2, b"/\0"))
    assert FrameParser().feed(hexbytes("0b000000 00000000 03000000 00100000") + b"x" * 4096)


# -- replay against a fresh daemon --------------------------------------------------
def check_message(got, m: dict, where: str) -> None:
    if "hex" in m:
        assert got.raw == hexbytes(m["hex"]), (
            f"{where}: got {got.raw.hex(' ', -4)}\n      want {m['hex']}\n"
            f"      (payload {got.payload!r})")
        return
    head = (got.type, got.req_id, got.tx_id)
    assert head == (m["type"], m["req_id"], m["tx_id"]), f"{where}: header {head}"
    assert XSD_SOCKMSG.unpack_from(got.raw)[3] == len(got.payload)
    assert re.fullmatch(m["payload_regex"], got.payload.decode("latin-1"), re.S), (
        f"{where}: payload {got.payload!r} !~ {m['payload_regex']!r}")


def _replay_params():
    for v in VECTORS["messages"]:
        marks = []
        if v["name"] in DAEMON_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=DAEMON_BUGS[v["name"]]))
        yield pytest.param(v, id=v["name"], marks=marks)


@pytest.mark.timeout(15)
@pytest.mark.parametrize("v", list(_replay_params()))
def test_replay_vector_against_fresh_daemon(xenstored, v):
    with RawClient(xenstored.socket) as c:
        steps = [*v["setup"], v["exchange"]]
        for i, ex in enumerate(steps):
            where = f"{v['name']} step {i}"
            c.send(hexbytes(ex["request"]["hex"]))
            check_message(c.recv_msg(), ex["reply"], f"{where} reply")
            for k, ev in enumerate(ex["events"]):
                check_message(c.recv_msg(), ev, f"{where} event {k}")
        # Nothing else was queued: the very next message is the sentinel's reply.
        c.send(pack(10, b"0\0", req_id=0xABCD0123))
        sentinel = c.recv_msg()
        assert sentinel.raw == pack(10, b"/local/domain/0\0", req_id=0xABCD0123), (
            f"unexpected extra message {sentinel}")
    # Semantic checks for the vectors whose payload legitimately varies.
    with RawClient(xenstored.socket) as c2:
        assert c2.alive()
        if v["name"] == "XS_GET_QUOTA list":
            names = set(c2.ok(25, b"")[:-1].split(b" "))
            assert {b"nodes", b"watches", b"transactions"} <= names
        if v["name"] == "XS_GET_FEATURE":
            feats = int(c2.ok(23, b"")[:-1])
            assert feats & ~0xF == 0, "only XENSTORE_SERVER_FEATURE_* bits (1|2|4|8)"
