"""XenBus device states: mirrors ``xen/include/public/io/xenbus.h``
(Xen commit c447b730, 4.23-unstable).

Each end of a split device publishes its ``state`` node in XenStore. The
header defines only the values; the allowed edges below are pvxen's
policy, drawn from the handshake diagram in ``io/blkif.h``
(Initialising -> InitWait -> Initialised -> Connected, with the skips it
permits) plus the teardown path (-> Closing -> Closed) and
reconfiguration. Writing the current state again is always allowed.
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


_S = XenbusState

XENBUS_TRANSITIONS: dict[XenbusState, frozenset[XenbusState]] = {
    _S.XenbusStateUnknown: frozenset({_S.XenbusStateInitialising, _S.XenbusStateClosed}),
    _S.XenbusStateInitialising: frozenset(
        {_S.XenbusStateInitWait, _S.XenbusStateInitialised, _S.XenbusStateClosing, _S.XenbusStateClosed}
    ),
    _S.XenbusStateInitWait: frozenset(
        {_S.XenbusStateInitialised, _S.XenbusStateConnected, _S.XenbusStateClosing, _S.XenbusStateClosed}
    ),
    _S.XenbusStateInitialised: frozenset(
        {_S.XenbusStateConnected, _S.XenbusStateClosing, _S.XenbusStateClosed}
    ),
    _S.XenbusStateConnected: frozenset(
        {_S.XenbusStateReconfiguring, _S.XenbusStateClosing, _S.XenbusStateClosed}
    ),
    _S.XenbusStateClosing: frozenset({_S.XenbusStateClosed}),
    # A closed device may be re-initialised (frontend reconnect) or removed.
    _S.XenbusStateClosed: frozenset({_S.XenbusStateInitialising, _S.XenbusStateUnknown}),
    _S.XenbusStateReconfiguring: frozenset(
        {_S.XenbusStateReconfigured, _S.XenbusStateClosing, _S.XenbusStateClosed}
    ),
    _S.XenbusStateReconfigured: frozenset(
        {_S.XenbusStateConnected, _S.XenbusStateClosing, _S.XenbusStateClosed}
    ),
}
assert set(XENBUS_TRANSITIONS) == set(XenbusState)


class XenbusTransitionError(ValueError):
    """A state change the handshake does not allow."""


def xenbus_transition_allowed(old: XenbusState, new: XenbusState) -> bool:
    return new == old or new in XENBUS_TRANSITIONS[old]


def xenbus_transition(old: XenbusState, new: XenbusState) -> XenbusState:
    """Return ``new`` if ``old -> new`` is allowed; raise otherwise."""
    if not xenbus_transition_allowed(old, new):
        raise XenbusTransitionError(f"xenbus state {old.name} -> {new.name} is not allowed")
    return new


def parse_xenbus_state(text: str | bytes) -> XenbusState:
    """Parse a ``state`` node's value (decimal text), refusing junk."""
    s = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    s = s.strip()
    if not s.isdigit() or len(s) > 2:
        raise ValueError(f"bad xenbus state value {text!r}")
    return XenbusState(int(s))
