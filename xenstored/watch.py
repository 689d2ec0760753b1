"""Watches: registration and matching (docs/misc/xenstore.txt "Watches").

An event at path P matches a watch on W when P is W or lies below W; a
recursive removal at P also reaches watches below P, which are told their
own path. Watches are per connection and keyed by (path, token).

Pure: matching returns (watch, event path) pairs; the dispatcher decides
who may see them and queues the ``XS_WATCH_EVENT`` messages.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from xenstored import path as xpath


@dataclass(frozen=True, slots=True)
class Watch:
    owner: object  # the Connection that registered it
    path: str  # absolute (or special) path
    token: bytes
    relative: bool  # registered with a relative path: events are relative too
    depth: int | None = None  # XS_WATCH's optional depth (WATCHDEPTH feature)

    def accepts(self, event_path: str) -> bool:
        if self.depth is None or xpath.is_special(self.path):
            return True
        if event_path == self.path:
            return True
        rest = event_path[len(self.path):] if self.path != "/" else event_path
        return rest.count("/") <= self.depth


class WatchRegistry:
    def __init__(self) -> None:
        self._by_path: dict[str, dict[tuple[object, bytes], Watch]] = defaultdict(dict)

    def add(self, watch: Watch) -> bool:
        """False when the connection already has this (path, token)."""
        slot = self._by_path[watch.path]
        key = (watch.owner, watch.token)
        if key in slot:
            return False
        slot[key] = watch
        return True

    def remove(self, owner: object, path: str, token: bytes) -> Watch | None:
        slot = self._by_path.get(path)
        if not slot:
            return None
        watch = slot.pop((owner, token), None)
        if not slot:
            del self._by_path[path]
        return watch

    def remove_all(self, owner: object, watches: list[Watch]) -> None:
        for w in watches:
            self.remove(owner, w.path, w.token)

    def match(self, event_path: str, recursive: bool) -> list[tuple[Watch, str]]:
        out: list[tuple[Watch, str]] = []
        by_path = self._by_path
        if not by_path:  # nobody watches anything: the common case for a write
            return out
        if xpath.is_special(event_path):
            out.extend((w, event_path) for w in by_path.get(event_path, {}).values())
            return out
        for p in (*xpath.ancestors(event_path), event_path):
            slot = by_path.get(p)
            if slot:
                for w in slot.values():
                    if w.accepts(event_path):
                        out.append((w, event_path))
        if recursive:
            for p, slot in self._by_path.items():
                if p != event_path and not xpath.is_special(p) and xpath.is_child(p, event_path):
                    out.extend((w, p) for w in slot.values())
        return out

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_path.values())
