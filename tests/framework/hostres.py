"""Host resources that tests share, and how the parallel run keeps them apart.

``make test`` runs the suite on several pytest-xdist workers with
``--dist loadgroup``. Each test has its own temporary directory, runtime
directory and sockets, bridge names are random (``pvxbr<hex>``) and guest
cgroups are ``pvxen/guest-<random hex>``, so almost nothing collides. What
does:

* TAP interfaces. backendd names a vif's TAP ``vif<domid>.<devid>``, the
  name Linux's xen-netback gives it (``drivers/net/xen-netback/interface.c``),
  and every test's hypervisord numbers its guests from 1: two workers' guests
  would both want ``vif1.0``. Tests that make real TAPs carry
  :data:`HOST_NET`, so they all run on one worker, one after another; and
  each holds a lock file while it runs (``tests/conftest.py``), so that
  another test run on the same host waits for it.
* The source tree. ``tests/test_import_direction.py`` writes a probe module
  into ``frontends/`` while its other tests walk that package: the module
  carries :data:`SOURCE_TREE` and runs on one worker.
* CPU time. A test that compares a timing with a baseline it took moments
  before (a latency ratio) measures the other workers' load too: such tests
  carry ``pytest.mark.exclusive``, which ``make test`` runs alone, after the
  parallel run.
"""

from __future__ import annotations

import pytest

HOST_NET = pytest.mark.xdist_group("host-net")
SOURCE_TREE = pytest.mark.xdist_group("source-tree")
#: groups whose resource is the host's, not one checkout's: they also take a lock file
HOST_WIDE = {"host-net"}
