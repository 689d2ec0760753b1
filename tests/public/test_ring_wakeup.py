"""No request is stranded by notification suppression, with the two ends of
an ``io/ring.h`` ring in two real processes on one shared page.

The race the final check of ``xen/include/public/io/ring.h`` closes: the
back end finds the ring empty and is about to sleep, but has not yet
re-armed ``req_event``; the front end pushes now, sees the stale
``req_event`` and (correctly, by RING_PUSH_REQUESTS_AND_CHECK_NOTIFY) sends
no notification. Only the back end's re-read of ``req_prod`` after its
``xen_mb()`` (RING_FINAL_CHECK_FOR_REQUESTS) can find that request.
:func:`forced` makes exactly that interleaving happen, across processes,
by holding the back end between its first check and its ``req_event``
store until the front end has pushed; :func:`doorbell` runs both ends
free, each sleeping on a doorbell (a socket standing in for the event
channel) only through the FINAL_CHECK protocol.

The indices are :mod:`libxen.ringidx`'s atomic words, as between domains.
"""

from __future__ import annotations

import select
import struct
import time

import pytest

from hypervisord.public.io.ring import SRING_REQ_EVENT_OFF, SRING_RSP_EVENT_OFF, BackRing, FrontRing, SharedRing
from libxen.ringidx import index_accessor
from tests.hypervisord.ring_stress import _run_pair

ENTRY = 16
SEQ = struct.Struct("<Q")
HISTORY = 3  # requests served while busy, so req_event lags behind req_cons


class HookedRing(SharedRing):
    """A shared ring that runs ``hook`` once, just before the first store to
    the event index at ``hook_off`` (inside the FINAL_CHECK macro)."""

    __slots__ = ("hook", "hook_off")

    def __init__(self, page, hook_off: int) -> None:
        super().__init__(page, ENTRY, index_access=index_accessor)
        self.hook = None
        self.hook_off = hook_off

    def _store(self, off: int, value: int) -> None:
        if off == self.hook_off and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        super()._store(off, value)


def _final_check_without_recheck(back: BackRing) -> bool:
    """A broken RING_FINAL_CHECK_FOR_REQUESTS: no re-read after the barrier."""
    if back.nr_unconsumed_requests():
        return True
    back.sring.req_event = back.req_cons + 1
    return False


def forced(recheck: bool) -> tuple[dict, dict]:
    """One forced lost-wakeup interleaving on requests; each end reports."""

    def front(page, sock):
        sring = HookedRing(page, -1)
        ring = FrontRing.init(sring)
        for i in range(HISTORY):
            ring.put_request(SEQ.pack(i))
        first_notify = ring.push_requests_and_check_notify()
        sock.sendall(b"G")  # history published
        assert sock.recv(1) == b"C"  # the back end found the ring empty ...
        ring.put_request(SEQ.pack(HISTORY))  # ... and has not re-armed req_event
        notify = ring.push_requests_and_check_notify()
        sock.sendall(b"K" if notify else b"N")
        out = {"first_notify": first_notify, "notify": notify, "req_prod": sring.req_prod}
        sock.recv(1)  # the back end is done with the page
        sring.close()
        return out

    def back(page, sock):
        sock.settimeout(10)
        assert sock.recv(1) == b"G"
        sring = HookedRing(page, SRING_REQ_EVENT_OFF)
        ring = BackRing.init(sring)
        busy = [SEQ.unpack(r[:8])[0] for r in ring.take_requests()]  # busy: no final check
        verdict: list[bytes] = []

        def let_the_front_push() -> None:
            sock.sendall(b"C")
            verdict.append(sock.recv(1))

        sring.hook = let_the_front_push
        check = BackRing.final_check_for_requests if recheck else _final_check_without_recheck
        work = check(ring)
        late = [SEQ.unpack(r[:8])[0] for r in ring.take_requests()] if work else []
        out = {"busy": busy, "hooked": sring.hook is None, "verdict": verdict, "work": work,
               "late": late, "stranded": ring.nr_unconsumed_requests() if not work else 0,
               "req_event": sring.req_event}
        sock.sendall(b"D")
        sring.close()
        return out

    return tuple(_run_pair([front, back], 30))


@pytest.mark.timeout(60)
def test_forced_lost_wakeup_interleaving_strands_no_request():
    front, back = forced(recheck=True)
    assert "error" not in front and "error" not in back, (front, back)
    assert back["busy"] == [0, 1, 2] and back["hooked"]
    # The interleaving really happened: the push came while req_event was
    # stale (still 1), so the front end sent no notification at all ...
    assert front["first_notify"] and back["verdict"] == [b"N"] and not front["notify"]
    assert front["req_prod"] == HISTORY + 1
    # ... and the back end's re-check after re-arming found the request.
    assert back["work"] and back["late"] == [HISTORY] and back["stranded"] == 0
    assert back["req_event"] == HISTORY + 1


@pytest.mark.timeout(60)
def test_the_forced_interleaving_strands_a_request_without_the_recheck():
    # The same schedule against a final check that does not re-read req_prod:
    # the back end would sleep with a request on the ring and no kick coming.
    front, back = forced(recheck=False)
    assert "error" not in front and "error" not in back, (front, back)
    assert not front["notify"] and back["verdict"] == [b"N"]
    assert not back["work"] and back["stranded"] == 1


def doorbell(total: int, seconds: float) -> tuple[dict, dict]:
    """Both ends free-running; each blocks on its doorbell when its final
    check says there is nothing, and is kicked only when CHECK_NOTIFY says
    so. A lost wakeup leaves both asleep: the doorbell wait times out."""

    def wait(sock, out) -> bool:
        ready, _, _ = select.select([sock], [], [], seconds)
        if not ready:
            out["errors"].append("asleep with no kick coming (lost wakeup)")
            return False
        out["woken"] += len(sock.recv(4096))
        return True

    def front(page, sock):
        sring = HookedRing(page, -1)
        ring = FrontRing.init(sring)
        sock.sendall(b"G")
        out = {"sent": 0, "answered": 0, "kicks": 0, "woken": 0, "errors": []}
        burst = 1
        while out["answered"] < total:
            n = min(burst, ring.free_requests(), total - out["sent"])
            for _ in range(n):
                ring.put_request(SEQ.pack(out["sent"]))
                out["sent"] += 1
            burst = burst % 7 + 1  # varied bursts, some while the back end sleeps
            if n and ring.push_requests_and_check_notify():
                out["kicks"] += 1
                sock.sendall(b"K")
            got = ring.take_responses()
            for r in got:
                if SEQ.unpack(r[:8])[0] != out["answered"]:
                    out["errors"].append(f"response {SEQ.unpack(r[:8])[0]} out of order")
                out["answered"] += 1
            if not got and not n and not ring.final_check_for_responses():
                if not wait(sock, out):
                    break
            if out["errors"]:
                break
        time.sleep(0.05)
        sring.close()
        return out

    def back(page, sock):
        assert sock.recv(1) == b"G"
        sring = HookedRing(page, -1)
        ring = BackRing.init(sring)
        out = {"served": 0, "kicks": 0, "woken": 0, "errors": []}
        while out["served"] < total:
            reqs = ring.take_requests()
            for r in reqs:
                ring.put_response(r)
                out["served"] += 1
            if reqs and ring.push_responses_and_check_notify():
                out["kicks"] += 1
                sock.sendall(b"K")
            if not reqs and not ring.final_check_for_requests():
                if not wait(sock, out):
                    break
        sring.close()
        return out

    return tuple(_run_pair([front, back], seconds + 30))


@pytest.mark.timeout(90)
def test_two_processes_with_doorbells_serve_every_request():
    total = 20_000
    front, back = doorbell(total, 10.0)
    assert "error" not in front and "error" not in back, (front, back)
    assert front["errors"] == [] and back["errors"] == [], (front, back)
    assert front["sent"] == front["answered"] == back["served"] == total, (front, back)
    # Suppression did its job: far fewer kicks than requests and responses.
    assert 0 < front["kicks"] < total and 0 < back["kicks"] < total, (front, back)
