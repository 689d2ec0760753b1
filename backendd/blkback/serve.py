"""One connected blkif: the request loop (``xen_blkif_schedule`` and
``__do_block_io_op`` of Linux's ``drivers/block/xen-blkback/blkback.c``).

Each pass takes every published request (copied once, ``take_requests``),
validates the copies (:mod:`backendd.blkback.ring`), maps all the grants
the batch needs in one hypercall (indirect pages first, copied once and
parsed), moves the data between the image and the mappings
(:mod:`backendd.blkback.io`), then writes every response and pushes them
with one notification check. When the ring is empty it does
``RING_FINAL_CHECK_FOR_REQUESTS`` (sets ``req_event``, full barrier,
re-checks) before it sleeps on the event channel, so a request published
between the last check and the sleep is never stranded.

A frontend whose ``req_prod`` runs more than a ring ahead of our responses
(``RING_REQUEST_PROD_OVERFLOW``) is broken or hostile: :class:`RingBroken`
ends the loop and the device is closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from hypervisord.public.io.blkif import BlkifOp, BlkifRsp
from hypervisord.public.io.ring import BackRing, RingOverflowError
from libxen.gnttab import GrantError

from backendd.blkback.grants import Grants
from backendd.blkback.io import Image, skip
from backendd.blkback.ring import BadRequest, Limits, Request, finish_indirect, parse_request, \
    request_id, response

log = logging.getLogger("backendd.blkback")
Op = BlkifOp
OKAY, ERROR = BlkifRsp.BLKIF_RSP_OKAY, BlkifRsp.BLKIF_RSP_ERROR


class RingBroken(Exception):
    """The frontend broke the ring protocol; the device must close."""


@dataclass
class Stats:
    """Linux blkback's ``statistics/`` (``rd_req``, ``wr_req``, ``f_req``,
    ``ds_req``, ``rd_sect``, ``wr_sect``) and a few of ours."""

    rd_req: int = 0
    wr_req: int = 0
    f_req: int = 0
    ds_req: int = 0
    rd_sect: int = 0
    wr_sect: int = 0
    indirect: int = 0
    errors: int = 0
    eopnotsupp: int = 0
    wakeups: int = 0
    batches: int = 0
    inline: int = 0
    threaded: int = 0

    def line(self, grants: Grants) -> str:
        fields = {**self.__dict__, "persistent_grants": len(grants.cache),
                  "persistent_maps": grants.persistent_maps,
                  "transient_maps": grants.transient_maps}
        return " ".join(f"{k}={v}" for k, v in fields.items())


@dataclass
class Job:
    """A request's I/O: the views onto its mapped segments."""

    req: Request
    bufs: list[memoryview] = field(default_factory=list)
    done: int = 0  #: bytes already moved inline
    status: BlkifRsp = OKAY


def _respond_op(raw: bytes) -> int:
    """The operation to echo for a refused request (an INDIRECT's own op
    when it is one blkfront knows)."""
    if raw[0] == Op.BLKIF_OP_INDIRECT and raw[1] in (Op.BLKIF_OP_READ, Op.BLKIF_OP_WRITE):
        return raw[1]
    return raw[0]


@dataclass
class Blkif:
    name: str
    image: Image
    limits: Limits
    back: BackRing
    grants: Grants
    evtchn: object  #: libxen.evtchn.XenEvtchn
    port: int
    stats: Stats = field(default_factory=Stats)

    async def run(self) -> None:
        """Serve the ring until cancelled; RingBroken if the frontend breaks it."""
        while True:
            try:
                raws = self.back.take_requests()
            except RingOverflowError as e:
                raise RingBroken(f"frontend provided bogus ring requests: {e}") from e
            if raws:
                self.stats.batches += 1
                await self.serve(raws)
                if self.back.push_responses_and_check_notify():
                    self.evtchn.notify_soon(self.port)
                continue
            if self.back.final_check_for_requests():
                continue
            await self.evtchn.wait_port(self.port)
            self.stats.wakeups += 1

    # -- one batch ------------------------------------------------------------------
    async def serve(self, raws: list[bytes]) -> None:
        answers: list[tuple[int, int, BlkifRsp]] = []
        reqs: list[tuple[bytes, Request]] = []
        for raw in raws:
            try:
                reqs.append((raw, parse_request(raw, self.limits)))
            except BadRequest as e:
                answers.append(self._refuse(raw, e))
        reqs = await self._parse_indirect(reqs, answers)
        jobs = await self._map_data(reqs, answers)
        try:
            await self._do_io(jobs)
        finally:
            for job in jobs:
                for b in job.bufs:
                    b.release()
            await self.grants.release()
        for job in jobs:
            answers.append((job.req.id, job.req.op, job.status))
            self._count(job)
        for rid, op, status in answers:
            self.back.put_response(response(rid, op, status))

    def _refuse(self, raw: bytes, e: BadRequest) -> tuple[int, int, BlkifRsp]:
        if e.status == BlkifRsp.BLKIF_RSP_EOPNOTSUPP:
            self.stats.eopnotsupp += 1
        else:
            self.stats.errors += 1
        log.debug("%s: refused request: %s", self.name, e)
        return request_id(raw), _respond_op(raw), e.status

    def _count(self, job: Job) -> None:
        s, req = self.stats, job.req
        if job.status != OKAY:
            s.errors += 1
        if req.op == Op.BLKIF_OP_READ:
            s.rd_req += 1
            s.rd_sect += req.nr_sects
        elif req.op == Op.BLKIF_OP_WRITE:
            s.wr_req += 1
            s.wr_sect += req.nr_sects
        elif req.op == Op.BLKIF_OP_FLUSH_DISKCACHE:
            s.f_req += 1
            s.wr_sect += req.nr_sects
        elif req.op == Op.BLKIF_OP_DISCARD:
            s.ds_req += 1

    async def _parse_indirect(self, reqs, answers):
        wanted = [(g, True) for _, r in reqs for g in r.indirect_grefs]
        if not wanted:
            return reqs
        maps = await self.grants.map(wanted)
        out = []
        for raw, req in reqs:
            if not req.indirect_grefs:
                out.append((raw, req))
                continue
            self.stats.indirect += 1
            pages = [maps[(g, True)] for g in req.indirect_grefs]
            bad = next((m for m in pages if isinstance(m, GrantError)), None)
            if bad is not None:
                answers.append(self._refuse(raw, BadRequest(ERROR, f"indirect page: {bad}")))
                continue
            try:  # one copy of each page (RING_COPY_REQUEST for indirect frames)
                out.append((raw, finish_indirect(req, [bytes(m.view) for m in pages], self.limits)))
            except BadRequest as e:
                answers.append(self._refuse(raw, e))
        return out

    async def _map_data(self, reqs, answers) -> list[Job]:
        # A page we only read from (a WRITE's data) is mapped read-only.
        wanted = [(s.gref, r.op != Op.BLKIF_OP_READ) for _, r in reqs for s in r.segments]
        maps = await self.grants.map(wanted) if wanted else {}
        jobs = []
        for raw, req in reqs:
            ro = req.op != Op.BLKIF_OP_READ
            segs = [(s, maps[(s.gref, ro)]) for s in req.segments]
            bad = next((m for _, m in segs if isinstance(m, GrantError)), None)
            if bad is not None:
                answers.append(self._refuse(raw, BadRequest(ERROR, f"data page: {bad}")))
                continue
            jobs.append(Job(req, [m.view[s.offset:s.offset + s.length] for s, m in segs]))
        return jobs

    async def _do_io(self, jobs: list[Job]) -> None:
        """Inline while nothing would block, the rest (in order) in a thread."""
        for i, job in enumerate(jobs):
            if not self._try_inline(job):
                self.stats.threaded += len(jobs) - i
                await trio.to_thread.run_sync(self._blocking, jobs[i:])
                return
            self.stats.inline += 1

    def _try_inline(self, job: Job) -> bool:
        req = job.req
        if req.op == Op.BLKIF_OP_READ:
            job.done = self.image.try_read(job.bufs, req.offset)
        elif req.op == Op.BLKIF_OP_WRITE:
            job.done = self.image.try_write(job.bufs, req.offset)
        else:
            return False  # fsync and fallocate may always block
        return job.done == req.length

    def _blocking(self, jobs: list[Job]) -> None:
        """In a worker thread: finish each job, in order."""
        for job in jobs:
            req = job.req
            try:
                if req.op == Op.BLKIF_OP_READ:
                    self.image.read(skip(job.bufs, job.done), req.offset + job.done)
                elif req.op in (Op.BLKIF_OP_WRITE, Op.BLKIF_OP_FLUSH_DISKCACHE):
                    if job.bufs:
                        self.image.write(skip(job.bufs, job.done), req.offset + job.done)
                    if req.flush:  # acknowledged only once the image is on disk
                        self.image.flush()
                elif req.op == Op.BLKIF_OP_DISCARD:
                    self.image.discard(req.offset, req.length)
            except OSError as e:
                log.warning("%s: %s of sectors %d+%d failed: %s", self.name, req.op.name,
                            req.sector, req.nr_sects, e)
                job.status = ERROR
