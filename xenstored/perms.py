"""Node permissions (docs/misc/xenstore.txt "Permissions"; cxenstored core.c).

A permission list is ``<letter><domid>`` entries: ``n`` none, ``r`` read,
``w`` write, ``b`` both. The first entry names the owner and gives the
default for every domain without an entry of its own. The owner and
privileged connections have full access; otherwise the first later entry
for the domain decides.
"""

from __future__ import annotations

from dataclasses import dataclass

PERM_NONE = 0
PERM_READ = 1
PERM_WRITE = 2
PERM_BOTH = PERM_READ | PERM_WRITE

_LETTERS = {"n": PERM_NONE, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_BOTH}
_BY_BITS = {v: k for k, v in _LETTERS.items()}

DOMID_MAX = 0x7FEF  # DOMID_FIRST_RESERVED - 1 (xen.h)


class PermsError(ValueError):
    """A permission string that does not parse."""


@dataclass(frozen=True, slots=True)
class Perm:
    domid: int
    bits: int

    def __str__(self) -> str:
        return f"{_BY_BITS[self.bits]}{self.domid}"

    @classmethod
    def parse(cls, text: str) -> "Perm":
        if len(text) < 2 or text[0] not in _LETTERS:
            raise PermsError(f"bad permission {text!r}")
        digits = text[1:]
        if not digits.isdigit() or not digits.isascii():
            raise PermsError(f"bad permission {text!r}")
        domid = int(digits)
        if domid > 0xFFFF:
            raise PermsError(f"bad domid in permission {text!r}")
        return cls(domid, _LETTERS[text[0]])


@dataclass(frozen=True, slots=True)
class Perms:
    entries: tuple[Perm, ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise PermsError("empty permission list")

    @property
    def owner(self) -> int:
        return self.entries[0].domid

    @classmethod
    def parse(cls, items: list[str]) -> "Perms":
        return cls(tuple(Perm.parse(i) for i in items))

    @classmethod
    def of(cls, text: str) -> "Perms":
        """``Perms.of("b0 r5")``: handy in tests and defaults."""
        return cls.parse(text.split())

    def strings(self) -> list[str]:
        return [str(p) for p in self.entries]

    def bits_for(self, domid: int) -> int:
        """Access bits for an unprivileged ``domid`` (owner gets everything)."""
        if domid == self.owner:
            return PERM_BOTH
        for p in self.entries[1:]:
            if p.domid == domid:
                return p.bits
        return self.entries[0].bits

    def with_owner(self, domid: int) -> "Perms":
        first = self.entries[0]
        return Perms((Perm(domid, first.bits),) + self.entries[1:])

    def __str__(self) -> str:
        return ",".join(self.strings())


ROOT_PERMS = Perms((Perm(0, PERM_NONE),))
