"""Where pvxen's sockets live (no trio here: command-line tools import this).

The runtime directory is ``--rundir``, else ``$PVXEN_RUNDIR``, else
``/run/pvxen`` for root and ``$XDG_RUNTIME_DIR/pvxen`` otherwise; inside
it hypervisord listens on ``hypervisord/privcmd``, xenstored on
``xenstored/socket``, and the toolstack keeps its state in ``xl/``.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_runtime_dir() -> Path:
    env = os.environ.get("PVXEN_RUNDIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/pvxen")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "pvxen" if xdg else Path(f"/tmp/pvxen-{os.geteuid()}")


def runtime_dir(rundir: str | os.PathLike | None = None) -> Path:
    return Path(rundir) if rundir else default_runtime_dir()


def privcmd_path(rundir: str | os.PathLike | None = None) -> Path:
    return runtime_dir(rundir) / "hypervisord" / "privcmd"


def xenstored_path(rundir: str | os.PathLike | None = None) -> str | None:
    """The xenstored socket for an explicit rundir; None: the client's own search."""
    return str(Path(rundir) / "xenstored" / "socket") if rundir else None


def xl_dir(rundir: str | os.PathLike | None = None) -> Path:
    return runtime_dir(rundir) / "xl"
