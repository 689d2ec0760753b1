"""The toolstack's hypercall and path helpers: re-exported from libxen.

Kept so toolstack modules import one place; the code lives in
:mod:`libxen.sync` (blocking hypercalls, no trio) and
:mod:`libxen.paths`.
"""

from libxen.paths import (  # noqa: F401
    default_runtime_dir,
    privcmd_path,
    runtime_dir,
    xenstored_path,
    xl_dir,
)
from libxen.sync import SyncHypercall, SyncXenCall, XenError  # noqa: F401
