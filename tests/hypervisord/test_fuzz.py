"""Every hypercall with arguments of every shape, from dom0 and from a domU.

Hypothesis draws a registered ``(hypercall, subop)`` and an argument map
whose keys are the field names handlers read and whose values are of any
msgpack type (nested lists and maps included, as the gnttab batches
take). hypervisord must answer each one with a result or a ``-errno``:
never drop the connection, never log an internal error, never die. The
envelope itself is always well formed here (malformed envelopes are
``test_transport``'s).
"""

from __future__ import annotations

import os
import signal
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisord import domctl, evtchn, gnttab, memory, sched, version
from libxen import ctrl
from libxen.sync import SyncXenCall
from hypervisord.public.sched import SchedOp
from hypervisord.public.xen import Hypercall
from tests.hypervisord.rawcall import RawCall

pytestmark = pytest.mark.timeout(120)

#: (hypercall, subop) pairs hypervisord registers, plus a few it does not
OPS = sorted({key for m in (domctl, evtchn, gnttab, memory, sched, version)
              for key in m.HANDLERS} | {(99, 0), (Hypercall.domctl, 999)})
#: the field names handlers read (struct members of Xen's op structs)
FIELDS = ["clear", "cpumap_hard", "dom", "domain", "domain_id", "domid", "extent_order",
          "extent_start", "first_domain", "flags", "handle", "host_addr", "len", "max",
          "max_domains", "max_memkb", "max_vcpus", "nr_frames", "offset", "ops", "port",
          "reason", "ref", "remote_dom", "remote_port", "submap_idx", "target", "u", "vcpu",
          "version", "virq", "source", "dest", "dev_bus_addr", "count", "nr_ports"]

INTS = st.one_of(st.integers(-3, 70), st.sampled_from(
    [-1, -(2**31), 2**15, 2**16 - 1, 2**16, 0x7FF0, 0x7FF2, 2**31, 2**32 - 1, 2**32,
     2**63 - 1, -(2**63), 2**64 - 1]))
SCALARS = st.one_of(INTS, st.booleans(), st.none(), st.floats(allow_nan=True),
                    st.text(max_size=8), st.binary(max_size=20))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5)),
    max_leaves=12)
ARGS = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6)
CALLS = st.tuples(st.sampled_from(OPS), ARGS)


def check_reply(rc, result) -> None:
    assert isinstance(rc, int)
    assert result is None or isinstance(result, dict)
    if rc < 0:
        assert -rc < 200, rc  # a Xen errno


def clean_log(hypervisord) -> None:
    log = hypervisord.log()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


SETTINGS = settings(max_examples=400, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(calls=st.lists(CALLS, min_size=1, max_size=4))
def test_dom0_any_arguments(hypervisord, calls):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(hypervisord.privcmd))
    raw = RawCall(sock)
    try:
        for (hypercall, subop), args in calls:
            check_reply(*raw.call_args(hypercall, subop, args))
    finally:
        sock.close()
    assert hypervisord.alive
    clean_log(hypervisord)


@pytest.fixture
def domu(hypervisord):
    """A domain's hypercall connection, held by the test as its process would."""
    with SyncXenCall(hypervisord.privcmd) as xc:
        domid = ctrl.domain_create(xc)[1]["domain"]
        ctrl.domain_max_mem(xc, domid, 64)
        ctrl.populate_physmap(xc, list(range(8)), domid)
        fds = ctrl.connect_domain(xc, domid)[1]["fds"]
        ctrl.domain_unpause(xc, domid)
    sock = socket.socket(fileno=fds.pop("hypercall"))
    for fd in fds.values():
        os.close(fd)
    raw = RawCall(sock)
    # hypervisord takes the sender of a domain's first hypercall for the
    # domain's process and SIGKILLs it when the domain goes: that must be a
    # child standing in for the guest, never the test process itself.
    ready_r, ready_w = os.pipe()
    holder = os.fork()
    if holder == 0:
        try:
            raw.call_args(Hypercall.xen_version, 0, {})
            os.write(ready_w, b"!")
            while True:
                signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"!"
    os.close(ready_r)
    try:
        yield domid, raw
    finally:
        sock.close()
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)


@SETTINGS
@given(calls=st.lists(CALLS, min_size=1, max_size=4))
def test_domu_any_arguments(hypervisord, domu, calls):
    domid, raw = domu
    for (hypercall, subop), args in calls:
        if (hypercall, subop) == (Hypercall.sched_op, SchedOp.SCHEDOP_shutdown):
            continue  # a domain may end itself; that is not what this test is about
        check_reply(*raw.call_args(hypercall, subop, args))
    assert hypervisord.alive
    clean_log(hypervisord)
    with SyncXenCall(hypervisord.privcmd) as xc:  # still there, still running
        assert ctrl.domain_getinfo(xc, domid)[1]["domain"] == domid
