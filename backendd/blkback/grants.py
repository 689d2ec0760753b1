"""The frontend's grants as blkback maps them, persistent ones kept.

Linux's ``drivers/block/xen-blkback/blkback.c`` (``xen_blkbk_map``): with
``feature-persistent`` negotiated a gref is mapped once, writable
(whatever the request: the frontend grants its persistent pages
read-write), and kept until disconnect, up to ``max_pgrants`` (1056 there,
``xen_blkif_max_pgrants``); past that bound, and without the feature, a
grant is mapped for the one request and unmapped after it, read-only when
the request only reads the page (a WRITE's data, an indirect page).
A grant the frontend did not give us (wrong domain, bad ref, read-only for
a page we must write) fails its map: the request gets ``BLKIF_RSP_ERROR``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from libxen.core import XenError
from libxen.gnttab import GrantError, GrantMap, GrantMapper

log = logging.getLogger("backendd.blkback")
MAX_PGRANTS = 1056


@dataclass
class Grants:
    mapper: GrantMapper
    domid: int
    persistent: bool
    max_pgrants: int = MAX_PGRANTS
    cache: dict[int, GrantMap] = field(default_factory=dict)
    #: maps made for one request only, since the last ``release``
    transient: list[GrantMap] = field(default_factory=list)
    persistent_maps: int = 0  #: grants mapped into the cache, ever
    transient_maps: int = 0

    async def map(self, wanted: list[tuple[int, bool]]) -> dict[tuple[int, bool], GrantMap | GrantError]:
        """Map ``(gref, readonly)`` pairs (one hypercall for all that are new)."""
        out: dict[tuple[int, bool], GrantMap | GrantError] = {}
        todo: list[tuple[int, bool]] = []
        seen: set = set()
        for gref, ro in wanted:
            key = (gref, ro)
            if self.persistent and gref in self.cache:
                out[key] = self.cache[gref]
                continue
            ident = gref if self.persistent else key  # persistent: one writable map per gref
            if ident not in seen:
                seen.add(ident)
                todo.append(key)
        if not todo:
            return out
        asks = [(self.domid, gref, False if self.persistent else ro) for gref, ro in todo]
        try:
            maps = await self.mapper.map_batch(asks)
        except XenError as e:  # the whole batch refused (e.g. the domain is gone)
            return {**out, **{k: GrantError(-1, f"map d{self.domid}", str(e)) for k in todo}}
        for key, m in zip(todo, maps):
            out[key] = m
            if isinstance(m, GrantError):
                continue
            if self.persistent and len(self.cache) < self.max_pgrants:
                self.cache[key[0]] = m
                self.persistent_maps += 1
            else:
                self.transient.append(m)
                self.transient_maps += 1
        if self.persistent:  # both (gref, ro) keys of a gref are the one mapping
            by_gref = {key[0]: m for key, m in zip(todo, maps)}
            for key in wanted:
                if key not in out:
                    out[key] = by_gref[key[0]]
        return out

    async def release(self) -> None:
        """Unmap the transient maps (their views no longer in use)."""
        await self._unmap(self.transient)

    async def close(self) -> None:
        maps = list(self.cache.values())
        self.cache.clear()
        await self._unmap(maps)
        await self._unmap(self.transient)

    async def _unmap(self, maps: list[GrantMap]) -> None:
        # One at a time off the end of the list: a cancellation leaves the
        # rest in the list (for close()), never a mapping forgotten.
        while maps:
            m = maps[-1]
            try:
                await self.mapper.unmap(m)
            except (GrantError, XenError, OSError) as e:
                # The domain may be gone already (hypervisord dropped its handles).
                log.debug("unmap d%d ref %d: %s", m.domid, m.ref, e)
            maps.pop()
