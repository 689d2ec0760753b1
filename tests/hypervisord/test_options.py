"""hypervisord's command line: limits that take effect, and clear refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from libxen import ctrl
from libxen.sync import SyncXenCall, XenError
from hypervisord.public.errno import XenErrno as E
from tests.conftest import REPO
from tests.framework.daemons import Hypervisord

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("option, value, message", [
    ("--memory", "bogus", "'bogus' is not a size"),
    ("--memory", "0", "between 16 MiB and 1 TiB"),
    ("--memory", "12M", "between 16 MiB and 1 TiB"),
    ("--memory", "2T", "between 16 MiB and 1 TiB"),
    ("--max-domains", "0", "0 is not in 1..32751"),
    ("--max-domains", "32752", "not in 1..32751"),
    ("--max-ports", "4096", "4096 is not in 1..4095"),
    ("--max-ports", "many", "'many' is not a number"),
    ("--memory", "１０２４", "'１０２４' is not a size"),
    ("--memory", "9" * 5000, "is not a size"),
    ("--max-domains", "３", "'３' is not a number"),
    ("--max-ports", "1_0", "'1_0' is not a number"),
])
def test_bad_options_exit_2_naming_the_option(tmp_path, option, value, message):
    r = subprocess.run([sys.executable, "-m", "hypervisord", "--rundir", str(tmp_path),
                        option, value], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"argument {option}: " in r.stderr and message in r.stderr, r.stderr
    assert not (tmp_path / "hypervisord").exists()  # nothing was started


def test_limits_take_effect(tmp_path):
    hv = Hypervisord(tmp_path, ["--memory", "64M", "--max-domains", "3",
                                "--max-ports", "5"]).start()
    try:
        with SyncXenCall(hv.privcmd) as xc:
            _, info = ctrl.physinfo(xc)
            assert info["total_pages"] == (64 << 20) // 4096
            a = ctrl.domain_create(xc)[1]["domain"]
            ctrl.domain_create(xc)
            with pytest.raises(XenError) as full:  # dom0 + 2 = 3
                ctrl.domain_create(xc)
            assert full.value.rc == -E.XEN_ENOSPC
            ctrl.domain_destroy(xc, a)
            ctrl.domain_create(xc)  # room again
    finally:
        hv.kill()
