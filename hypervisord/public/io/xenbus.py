"""XenBus device states: mirrors ``xen/include/public/io/xenbus.h``
(Xen commit c447b730, 4.23-unstable).

Each end of a split device publishes its ``state`` node in XenStore. The
header defines only the values; which changes each end may make, and how a
backend answers its frontend's state, is policy and lives in
:mod:`libxen.xenbus`.
"""

from __future__ import annotations

from enum import IntEnum


class XenbusState(IntEnum):
    """``enum xenbus_state``."""

    XenbusStateUnknown = 0
    XenbusStateInitialising = 1
    XenbusStateInitWait = 2  # early init done; waiting for peer or hotplug
    XenbusStateInitialised = 3  # waiting for a connection from the peer
    XenbusStateConnected = 4
    XenbusStateClosing = 5  # closing because of an error or an unplug
    XenbusStateClosed = 6
    XenbusStateReconfiguring = 7
    XenbusStateReconfigured = 8


def parse_xenbus_state(text: str | bytes) -> XenbusState:
    """Parse a ``state`` node's value (decimal text), refusing junk."""
    s = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    s = s.strip()
    if not s.isdigit() or len(s) > 2:
        raise ValueError(f"bad xenbus state value {text!r}")
    return XenbusState(int(s))
