"""The XenbusState machine (libxen/xenbus.py): values as xenbus.h, the edges
each end may write, the skips Linux's drivers make, and the backend's answer
to its frontend's state as blkback's ``frontend_changed`` gives it."""

from __future__ import annotations

import pytest

from libxen.xenbus import (
    TRANSITIONS,
    BackendAction,
    XenbusState,
    XenbusTransitionError,
    backend_step,
    transition,
    transition_allowed,
)

S = XenbusState
A = BackendAction


def test_values_are_xenbus_h():
    assert [(s.name, int(s)) for s in S] == [
        ("XenbusStateUnknown", 0), ("XenbusStateInitialising", 1), ("XenbusStateInitWait", 2),
        ("XenbusStateInitialised", 3), ("XenbusStateConnected", 4), ("XenbusStateClosing", 5),
        ("XenbusStateClosed", 6), ("XenbusStateReconfiguring", 7), ("XenbusStateReconfigured", 8)]


def test_xenbus_handshake_and_teardown_are_allowed():
    path = [S.XenbusStateInitialising, S.XenbusStateInitWait, S.XenbusStateInitialised,
            S.XenbusStateConnected, S.XenbusStateClosing, S.XenbusStateClosed]  # fmt: skip
    for old, new in zip(path, path[1:]):
        assert transition(old, new) is new
    assert transition_allowed(S.XenbusStateConnected, S.XenbusStateConnected)
    assert transition_allowed(S.XenbusStateInitialising, S.XenbusStateInitialised)  # skip
    assert [int(s) for s in S] == list(range(9))


@pytest.mark.parametrize("old,new", [
    (S.XenbusStateInitialising, S.XenbusStateConnected),  # netfront: keys written, straight to Connected
    (S.XenbusStateInitWait, S.XenbusStateConnected),      # a backend skips Initialised
    (S.XenbusStateClosed, S.XenbusStateInitWait),         # blkback: "prepare for reconnect"
    (S.XenbusStateClosed, S.XenbusStateInitialised),      # blkfront reconnecting from Closed
])  # fmt: skip
def test_the_skips_linux_makes_are_allowed(old: XenbusState, new: XenbusState):
    assert transition(old, new) is new


def test_every_state_can_be_closed_on_a_fatal_error():
    # xenbus_dev_fatal switches a device in any state to Closing.
    for old in S:
        assert transition_allowed(old, S.XenbusStateClosing), old


@pytest.mark.parametrize(
    "old,new",
    [(S.XenbusStateClosed, S.XenbusStateConnected), (S.XenbusStateClosing, S.XenbusStateConnected),
     (S.XenbusStateConnected, S.XenbusStateInitWait), (S.XenbusStateUnknown, S.XenbusStateConnected),
     (S.XenbusStateClosing, S.XenbusStateInitialising), (S.XenbusStateConnected, S.XenbusStateInitialising)],
)  # fmt: skip
def test_xenbus_refuses_illegal_edges(old: XenbusState, new: XenbusState):
    with pytest.raises(XenbusTransitionError, match=f"{old.name} -> {new.name}"):
        transition(old, new)


def test_table_is_total_and_never_lists_the_state_itself():
    assert set(TRANSITIONS) == set(S)
    assert all(old not in news for old, news in TRANSITIONS.items())


@pytest.mark.parametrize("backend,frontend,online,want", [
    (S.XenbusStateInitWait, S.XenbusStateInitialising, True, A.NOTHING),
    (S.XenbusStateClosed, S.XenbusStateInitialising, True, A.INIT_WAIT),    # reconnect
    (S.XenbusStateInitWait, S.XenbusStateInitialised, True, A.CONNECT),
    (S.XenbusStateInitWait, S.XenbusStateConnected, True, A.CONNECT),       # missed Initialised
    (S.XenbusStateInitialising, S.XenbusStateConnected, True, A.CONNECT),   # missed everything
    (S.XenbusStateConnected, S.XenbusStateConnected, True, A.NOTHING),
    (S.XenbusStateConnected, S.XenbusStateClosing, True, A.CLOSE),
    (S.XenbusStateClosing, S.XenbusStateClosing, True, A.NOTHING),
    (S.XenbusStateClosing, S.XenbusStateClosed, True, A.CLOSED),
    (S.XenbusStateConnected, S.XenbusStateClosed, False, A.REMOVE),         # detached: drop it
    (S.XenbusStateConnected, S.XenbusStateUnknown, True, A.REMOVE),
    (S.XenbusStateConnected, S.XenbusStateInitWait, True, A.FATAL),         # no frontend writes that
    (S.XenbusStateClosed, S.XenbusStateConnected, True, A.NOTHING),         # not without InitWait
])  # fmt: skip
def test_backend_step_follows_blkback_frontend_changed(backend, frontend, online, want):
    assert backend_step(backend, frontend, online) is want


def test_every_action_leads_along_an_allowed_edge():
    target = {A.INIT_WAIT: S.XenbusStateInitWait, A.CONNECT: S.XenbusStateConnected,
              A.CLOSE: S.XenbusStateClosing, A.CLOSED: S.XenbusStateClosed,
              A.REMOVE: S.XenbusStateClosed, A.FATAL: S.XenbusStateClosing}
    for backend in S:
        for frontend in S:
            for online in (True, False):
                act = backend_step(backend, frontend, online)
                if act in target:
                    assert transition_allowed(backend, target[act]), (backend, frontend, act)
