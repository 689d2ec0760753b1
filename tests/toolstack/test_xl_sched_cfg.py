"""xl.cfg's ``cpu_weight=`` and ``cap=``, set when ``xl create`` builds the
domain (libxl's ``libxl__sched_set_params``), against real daemons."""

from __future__ import annotations

import pytest

from tests.pv.test_xl_pv import write_pv
from tests.toolstack.stack import stack  # noqa: F401 (fixture)
from toolstack import cpucg

pytestmark = pytest.mark.timeout(60)


def _spin(stack, tmp_path, extra: str, name: str = "spin"):
    stack.xl_ok("create", str(write_pv(tmp_path, name, "spin", extra)))
    return stack.domid_of(name)


def _cgroup_or_skip(stack, domid):
    pid = stack.launcher_guests()[domid]
    cg = cpucg.domain_cgroup(pid, create=False)
    if cg is None:
        r = stack.xl("sched-credit2", "-d", str(domid), "-w", "512")
        pytest.skip(f"no cpu cgroup on this host: {r.err.strip()}")
    return cg


def test_weight_and_cap_from_the_config(stack, tmp_path):
    try:
        domid = _spin(stack, tmp_path, "cpu_weight = 512\ncap = 25\n")
    except AssertionError as e:
        if "cannot set its CPU weight or cap" in str(e):
            pytest.skip(f"no cpu cgroup on this host: {e}")
        raise
    cg = _cgroup_or_skip(stack, domid)
    row = stack.xl_ok("sched-credit", "-d", "spin").out.splitlines()[1].split()
    assert row == ["spin", str(domid), "512", "25"]
    if cg.kind == "v2":
        assert (cg.path / "cpu.max").read_text().split() == ["25000", "100000"]
        assert (cg.path / "cpu.weight").read_text().strip() == str(cpucg.weight_to_v2(512))
    else:
        assert (cg.path / "cpu.cfs_quota_us").read_text().strip() == "25000"


def test_a_config_without_them_leaves_xens_defaults(stack, tmp_path):
    _spin(stack, tmp_path, "")
    row = stack.xl_ok("sched-credit", "-d", "spin").out.splitlines()[1].split()
    assert row[-2:] == ["256", "0"]


@pytest.mark.parametrize("extra,error", [
    ("cap = 101\n", "Cpu cap out of range, valid range is from 0 to 100"),
    ("cpu_weight = 0\n", "Cpu weight out of range"),
])
def test_an_out_of_range_value_fails_the_creation_and_the_domain_goes(stack, tmp_path, extra,
                                                                     error):
    r = stack.xl("create", str(write_pv(tmp_path, "bad", "spin", extra)))
    assert r.rc != 0 and error in r.err, r.err
    assert "libxl_domain_sched_params_set failed." in r.err
    stack.wait(lambda: stack.domids() == [0], "the half-made domain to go")


def test_a_non_number_is_a_warning_and_ignored_as_by_xlu_cfg_get_long(stack, tmp_path):
    r = stack.xl("create", str(write_pv(tmp_path, "spin", "spin", 'cap = "lots"\n')))
    assert r.rc == 0 and "warning: parameter `cap' is not a valid number" in r.err, r.err
    row = stack.xl_ok("sched-credit", "-d", "spin").out.splitlines()[1].split()
    assert row[-2:] == ["256", "0"]
