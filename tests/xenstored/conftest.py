"""Shared fixtures and helpers of the protocol tests (real daemon, raw client)."""

from __future__ import annotations

import pytest

from tests.xenstored.rawclient import XS_WATCH_EVENT, RawClient


@pytest.fixture
def c(xenstored):
    with RawClient(xenstored.socket) as client:
        yield client


@pytest.fixture
def connect(xenstored):
    opened = []

    def factory() -> RawClient:
        client = RawClient(xenstored.socket)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


def no_events(watcher: RawClient) -> None:
    """Round trip on ``watcher``: any event already due arrives first."""
    assert watcher.alive()
    assert list(watcher.events) == []


def ev(watcher: RawClient) -> tuple[bytes, bytes]:
    m = watcher.next_event()
    assert (m.type, m.req_id, m.tx_id) == (XS_WATCH_EVENT, 0, 0)
    path, token = m.strings
    return path, token


