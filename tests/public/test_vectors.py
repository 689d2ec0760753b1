"""Golden byte vectors (tests/vectors/public/*.json) for every ABI struct.

The expected bytes were written by hand from the C layouts; packing the
values must give exactly them, and unpacking them must give the values.
"""

from __future__ import annotations

import importlib
import json
import struct
from pathlib import Path

import pytest

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "public"
EXPECTED_FILES = {
    "arch_x86.json", "domctl.json", "event_channel.json", "grant_table.json",
    "io.json", "memory.json", "sched.json", "sysctl.json", "version.json", "xen.json",
}  # fmt: skip


def _load() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(VECTOR_DIR.glob("*.json")):
        for vec in json.loads(path.read_text())["vectors"]:
            out.append((f"{path.stem}: {vec['name']}", vec))
    return out


VECTORS = _load()


def _layout(ref: str) -> struct.Struct:
    module, name = ref.split(":")
    layout = getattr(importlib.import_module(module), name)
    assert isinstance(layout, struct.Struct), ref
    return layout


def _value(v: object) -> object:
    if isinstance(v, str):
        return int(v, 0)
    if isinstance(v, dict):
        return v["ascii"].encode("ascii") if "ascii" in v else bytes.fromhex(v["hex"])
    return v


def _expected(vec: dict) -> bytes:
    if "hex" in vec:
        return bytes.fromhex(vec["hex"])
    buf = bytearray(vec["size"])
    for off, hx in vec["patches"].items():
        run = bytes.fromhex(hx)
        buf[int(off) : int(off) + len(run)] = run
    return bytes(buf)


def test_every_header_has_vectors():
    assert {p.name for p in VECTOR_DIR.glob("*.json")} >= EXPECTED_FILES
    assert len(VECTORS) >= 60


@pytest.mark.parametrize("vec", [v for _, v in VECTORS], ids=[i for i, _ in VECTORS])
def test_pack_matches_golden(vec: dict):
    layout = _layout(vec["struct"])
    expected = _expected(vec)
    assert layout.size == len(expected), "vector size disagrees with the layout"
    assert layout.pack(*[_value(v) for v in vec["values"]]) == expected


@pytest.mark.parametrize("vec", [v for _, v in VECTORS], ids=[i for i, _ in VECTORS])
def test_unpack_matches_values(vec: dict):
    layout = _layout(vec["struct"])
    got = layout.unpack(_expected(vec))
    for field, want in zip(got, (_value(v) for v in vec["values"]), strict=True):
        if isinstance(want, bytes):
            assert field.rstrip(b"\0") == want.rstrip(b"\0")
        else:
            assert field == want
