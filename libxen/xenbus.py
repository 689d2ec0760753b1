"""The XenbusState machine both ends of a split device follow (pure logic).

``xen/include/public/io/xenbus.h`` defines the values only
(:class:`~hypervisord.public.io.xenbus.XenbusState`); the handshake is
described in ``xen/include/public/io/blkif.h`` (STATE DIAGRAMS) and made
concrete by Linux's drivers. This module holds, as data:

* :data:`TRANSITIONS`: the state changes either end may *write* to its own
  ``state`` node. :func:`transition` refuses any other edge. The table
  allows the skips Linux's drivers make: netfront goes Initialising ->
  Connected (``drivers/net/xen-netfront.c``, ``netback_changed``), a
  backend InitWait -> Connected without Initialised
  (``drivers/block/xen-blkback/xenbus.c``, ``connect``), blkfront Closed ->
  Initialised when it reconnects, blkback Closed -> InitWait ("prepare for
  reconnect"). Writing the current state again is a no-op
  (``drivers/xen/xenbus/xenbus_client.c``, ``__xenbus_switch_state``), and
  Closing is reachable from everywhere (``xenbus_dev_fatal`` switches a
  device in any state to Closing).
* :func:`backend_step`: what a backend does when it sees its frontend in a
  state, after Linux's blkback ``frontend_changed``. It works from the
  frontend's *current* state, not from the edge it took, so watch events
  that coalesce (the frontend moved twice before the backend read it) are
  tolerated: a frontend already Connected when first seen is connected.
"""

from __future__ import annotations

import enum

from hypervisord.public.io.xenbus import XenbusState, parse_xenbus_state

__all__ = ["TRANSITIONS", "BackendAction", "XenbusState", "XenbusTransitionError",
           "backend_step", "parse_xenbus_state", "transition", "transition_allowed"]

_S = XenbusState
Unknown, Initialising, InitWait = _S.XenbusStateUnknown, _S.XenbusStateInitialising, _S.XenbusStateInitWait
Initialised, Connected, Closing = _S.XenbusStateInitialised, _S.XenbusStateConnected, _S.XenbusStateClosing
Closed, Reconfiguring, Reconfigured = _S.XenbusStateClosed, _S.XenbusStateReconfiguring, _S.XenbusStateReconfigured

#: old -> the states an end may write next (besides writing ``old`` again).
TRANSITIONS: dict[XenbusState, frozenset[XenbusState]] = {
    # A node the toolstack has not written yet reads as Unknown.
    Unknown: frozenset({Initialising, Closing, Closed}),
    Initialising: frozenset({InitWait, Initialised, Connected, Closing, Closed}),
    InitWait: frozenset({Initialised, Connected, Closing, Closed}),
    Initialised: frozenset({Connected, Closing, Closed}),
    Connected: frozenset({Reconfiguring, Closing, Closed}),
    Closing: frozenset({Closed}),
    # Closed is where a device is reconnected from (or removed).
    Closed: frozenset({Initialising, InitWait, Initialised, Closing, Unknown}),
    Reconfiguring: frozenset({Reconfigured, Closing, Closed}),
    Reconfigured: frozenset({Connected, Closing, Closed}),
}
assert set(TRANSITIONS) == set(XenbusState)


class XenbusTransitionError(ValueError):
    """A state change the handshake does not allow."""


def transition_allowed(old: XenbusState, new: XenbusState) -> bool:
    return new == old or new in TRANSITIONS[old]


def transition(old: XenbusState, new: XenbusState) -> XenbusState:
    """``new`` if this end may go ``old -> new``; XenbusTransitionError otherwise."""
    if not transition_allowed(old, new):
        raise XenbusTransitionError(f"xenbus state {old.name} -> {new.name} is not allowed")
    return new


class BackendAction(enum.Enum):
    """What :func:`backend_step` asks a backend to do."""

    NOTHING = "nothing"          # wait for the next change
    INIT_WAIT = "init-wait"      # (re)publish features and limits, go InitWait
    CONNECT = "connect"          # read the frontend's ring keys, map, go Connected
    CLOSE = "close"              # go Closing (the frontend is closing)
    CLOSED = "closed"            # disconnect, go Closed; the device stays (online)
    REMOVE = "remove"            # disconnect, go Closed, and drop the device
    FATAL = "fatal"              # the frontend is in a state a frontend never writes


def backend_step(backend: XenbusState, frontend: XenbusState, online: bool) -> BackendAction:
    """The backend's answer to its frontend's state (blkback ``frontend_changed``).

    ``online`` is the backend's ``online`` node (libxl writes 0 to detach):
    a frontend Closed while the device is offline removes it, while online
    leaves it Closed for a reconnect.
    """
    if frontend == Initialising:
        return BackendAction.INIT_WAIT if backend == Closed else BackendAction.NOTHING
    if frontend in (Initialised, Connected):
        # "Ensure we connect even when two watches fire in close succession
        # and we miss the intermediate value of frontend_state."
        # A backend not yet Initialising (Unknown), or Closing/Closed (no
        # connect without a fresh InitWait), waits.
        if backend == Connected or not transition_allowed(backend, Connected):
            return BackendAction.NOTHING
        return BackendAction.CONNECT
    if frontend == Closing:
        return BackendAction.NOTHING if backend in (Closing, Closed) else BackendAction.CLOSE
    if frontend == Closed:
        return BackendAction.CLOSED if online else BackendAction.REMOVE
    if frontend == Unknown:
        return BackendAction.REMOVE  # the frontend's directory is gone
    return BackendAction.FATAL  # InitWait, Reconfiguring, Reconfigured: "saw state %d at frontend"
