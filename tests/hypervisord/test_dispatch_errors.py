"""The dispatcher tells the caller's mistakes from hypervisord's own bugs.

A malformed argument is ``-EINVAL``, found where the handler reads it; any
other exception in a handler is an internal error: logged with its traceback
at error level, answered ``-EIO``, and the connection and daemon go on
serving. The bugs come from a real hypervisord started with an extra,
buggy hypercall family (:mod:`tests.hypervisord.buggy_hypervisord`).
"""

from __future__ import annotations

import pytest

from tests.framework.daemons import Hypervisord
from tests.hypervisord.buggy_hypervisord import BUGGY_KEYERROR, BUGGY_ZERODIV
from tests.hypervisord.rawcall import RawCall

pytestmark = pytest.mark.timeout(60)

# Spelled out (xen/include/public/xen.h, errno.h, domctl.h, version.h, grant_table.h)
HYPERVISOR_xen_version = 17
HYPERVISOR_domctl = 36
HYPERVISOR_grant_table_op = 20
HYPERVISOR_event_channel_op = 32
XENVER_version = 0
XENVER_get_features = 6
XEN_DOMCTL_pausedomain = 3
XEN_DOMCTL_max_mem = 11
GNTTABOP_map_grant_ref = 0
GNTTABOP_copy = 5
EVTCHNOP_send = 4
EIO, EINVAL = 5, 22


class BuggyHypervisord(Hypervisord):
    def __init__(self, workdir) -> None:
        super().__init__(workdir)
        self.argv = ["tests.hypervisord.buggy_hypervisord", *self.argv[1:]]


@pytest.fixture
def buggy(tmp_path):
    from tests import conftest

    yield from conftest._daemon(BuggyHypervisord, tmp_path)


def test_handler_bug_is_internal_error_logged_and_survived(buggy):
    raw = RawCall.connect(buggy.privcmd)
    try:
        for subop in (BUGGY_KEYERROR, BUGGY_ZERODIV):
            rc, result = raw.call(HYPERVISOR_xen_version, subop)
            assert rc == -EIO, (subop, rc, result)
            assert result == {"error": "internal error in hypervisord"}
            # the same connection goes on being served
            rc, _ = raw.call(HYPERVISOR_xen_version, XENVER_version)
            assert rc == 4 << 16 | 17
    finally:
        raw.close()
    assert buggy.alive
    log = buggy.log()
    for subop, exc in ((BUGGY_KEYERROR, "KeyError"), (BUGGY_ZERODIV, "ZeroDivisionError")):
        line = f"ERROR d0 hypercall {HYPERVISOR_xen_version}/{subop}: internal error"
        assert line in log, log[-3000:]
        after = log[log.index(line):]
        assert "Traceback (most recent call last)" in after and exc in after, after[:3000]
    # a new connection is served as well
    raw = RawCall.connect(buggy.privcmd)
    try:
        assert raw.call(HYPERVISOR_xen_version, XENVER_version)[0] == 4 << 16 | 17
    finally:
        raw.close()


@pytest.mark.parametrize("hypercall, subop, args", [
    (HYPERVISOR_domctl, XEN_DOMCTL_pausedomain, {}),
    (HYPERVISOR_domctl, XEN_DOMCTL_pausedomain, {"domain": "1"}),
    (HYPERVISOR_domctl, XEN_DOMCTL_pausedomain, {"domain": 1 << 16}),
    (HYPERVISOR_domctl, XEN_DOMCTL_pausedomain, {"domain": True}),
    (HYPERVISOR_domctl, XEN_DOMCTL_max_mem, {"domain": 0, "max_memkb": -1}),
    (HYPERVISOR_xen_version, XENVER_get_features, {"submap_idx": [0] * 1000}),
    (HYPERVISOR_xen_version, XENVER_get_features, {"submap_idx": "0"}),
    (HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, {"ops": "x"}),
    (HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, {"ops": [1]}),
    (HYPERVISOR_grant_table_op, GNTTABOP_copy, {"ops": [{"source": 1, "dest": {}}]}),
    (HYPERVISOR_event_channel_op, EVTCHNOP_send, {"port": 2.0}),
])
def test_wrong_argument_types_are_einval(hypervisord, hypercall, subop, args):
    raw = RawCall.connect(hypervisord.privcmd)
    try:
        rc, result = raw.call_args(hypercall, subop, args)
    finally:
        raw.close()
    assert rc == -EINVAL, (rc, result)
    log = hypervisord.log()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


def test_collaborators_are_declared_before_install():
    """``Hypervisor``'s collaborators exist from ``__init__``, each with its
    meaning before its owner installs it (no getattr fallbacks)."""
    from hypervisord import gnttab
    from hypervisord.errors import HypercallError
    from hypervisord.hv import HvConfig, Hypervisor
    from hypervisord.public.errno import XenErrno

    hv = Hypervisor(HvConfig(memory_bytes=64 << 20))
    assert hv.gnttab is None
    with pytest.raises(HypercallError) as e:
        gnttab.state(hv)
    assert e.value.errno == XenErrno.XEN_ENOSYS
    dom = hv.create_domain(None, None, 16)
    hv.destroy(dom)  # raises VIRQ_DOM_EXC through the declared no-op
    gnttab.install(hv)
    assert gnttab.state(hv) is hv.gnttab
