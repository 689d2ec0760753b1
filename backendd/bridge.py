"""The links a vif's frames go to: a real TAP on a Linux bridge, or a switch.

Where the host allows it (root and ``/dev/net/tun``), each vif is a TAP
named ``vif<domid>.<devid>`` (the name Linux's xen-netback gives its
interfaces, ``drivers/net/xen-netback/interface.c``) enslaved to the
Linux bridge named by the backend's ``bridge`` key, created if missing
and brought up, as Xen's ``tools/hotplug/Linux/vif-bridge`` does (``ip
link set dev vifX.Y master BRIDGE``). What we created is recorded under
``<rundir>/backendd/net/`` so :func:`cleanup` removes it.

Otherwise (no root, no tun device, or ``PVXEN_NET_SWITCH=1``) an
in-process learning switch per bridge name stands in.

Either way a frame whose source MAC is not the vif's configured one is
dropped (the antispoof rule ``vif-common.sh`` installs with ebtables/
iptables when ``vif-bridge`` runs in antispoof mode).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import struct
import subprocess
from pathlib import Path

import trio

log = logging.getLogger("backendd.bridge")

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
#: frames a vif holds for a guest that is not reading (then the oldest go)
RX_QUEUE_MAX = 256
IFNAMSIZ = 16


def use_bridge() -> bool:
    """True when real TAPs and bridges are possible here."""
    if os.environ.get("PVXEN_NET_SWITCH") == "1":
        return False
    return os.geteuid() == 0 and os.access("/dev/net/tun", os.R_OK | os.W_OK)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"bad MAC {text!r}")
    return bytes(int(p, 16) for p in parts)


class Port:
    """One vif's side of a link: frames for the guest wait in ``queue``
    (bounded: when full the oldest frame is dropped, counted in ``dropped``)."""

    def __init__(self, name: str, mac: bytes) -> None:
        self.name = name
        self.mac = mac
        self.queue: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self.spoofed = 0
        self.wakeup = trio.Event()
        self.link: Switch | Tap | None = None

    def deliver(self, frame: bytes) -> None:
        if len(self.queue) >= RX_QUEUE_MAX:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(frame)
        self.wakeup.set()

    def send(self, frame: bytes) -> None:
        """A frame from the guest: antispoof, then onto the link."""
        if frame[6:12] != self.mac:
            self.spoofed += 1
            if self.spoofed == 1 or self.spoofed % 1000 == 0:
                log.warning("%s: dropped %d frame(s) with source MAC %s (its own is %s)",
                            self.name, self.spoofed, frame[6:12].hex(":"), self.mac.hex(":"))
            return
        if self.link is not None:
            self.link.forward(self, frame)

    def close(self) -> None:
        if self.link is not None:
            self.link.detach(self)
            self.link = None


class Switch:
    """An in-process learning switch standing in for a bridge of that name."""

    switches: dict[str, "Switch"] = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.ports: list[Port] = []
        self.fdb: dict[bytes, Port] = {}

    @classmethod
    def get(cls, name: str) -> "Switch":
        sw = cls.switches.get(name)
        if sw is None:
            sw = cls.switches[name] = cls(name)
        return sw

    def attach(self, port: Port) -> None:
        self.ports.append(port)
        port.link = self

    def detach(self, port: Port) -> None:
        if port in self.ports:
            self.ports.remove(port)
        for mac in [m for m, p in self.fdb.items() if p is port]:
            del self.fdb[mac]
        if not self.ports:
            Switch.switches.pop(self.name, None)

    def forward(self, src: Port, frame: bytes) -> None:
        self.fdb[frame[6:12]] = src
        dst = frame[0:6]
        out = self.fdb.get(dst) if not dst[0] & 1 else None
        if out is not None:
            if out is not src:
                out.deliver(frame)
            return
        for p in self.ports:  # broadcast, multicast, unknown unicast: flood
            if p is not src:
                p.deliver(frame)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _record_dir(rundir: Path) -> Path:
    d = Path(rundir) / "backendd" / "net"
    d.mkdir(parents=True, exist_ok=True)
    return d


def ensure_bridge(name: str, rundir: Path, address: str | None = None) -> None:
    """Create the bridge ``name`` if missing (recorded as ours) and bring it up."""
    if _ip("link", "show", "dev", name, check=False).returncode != 0:
        r = _ip("link", "add", "name", name, "type", "bridge", check=False)
        if r.returncode == 0:
            (_record_dir(rundir) / f"bridge.{name}").write_text(name)
            log.info("created bridge %s", name)
        elif "exists" not in r.stderr:
            raise OSError(f"ip link add {name} type bridge: {r.stderr.strip()}")
    _ip("link", "set", "dev", name, "up")
    if address:
        _ip("addr", "replace", address, "dev", name)


class Tap:
    """A TAP ``vif<domid>.<devid>`` on a real bridge, for one port."""

    def __init__(self, ifname: str, bridge: str, rundir: Path, mtu: int = 1500) -> None:
        if len(ifname) >= IFNAMSIZ:
            raise OSError(f"interface name {ifname!r} too long")
        self.ifname = ifname
        self.bridge = bridge
        self.rundir = Path(rundir)
        self.port: Port | None = None
        ensure_bridge(bridge, rundir, os.environ.get("PVXEN_BRIDGE_ADDRESS") or None)
        _ip("link", "del", "dev", ifname, check=False)  # a stale one of a dead backendd
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI))
            (_record_dir(rundir) / f"tap.{ifname}").write_text(bridge)
            # vif-bridge: the MAC of the host side is fe:ff:ff:ff:ff:ff
            _ip("link", "set", "dev", ifname, "address", "fe:ff:ff:ff:ff:ff")
            _ip("link", "set", "dev", ifname, "mtu", str(mtu))
            _ip("link", "set", "dev", ifname, "master", bridge)
            _ip("link", "set", "dev", ifname, "up")
        except BaseException:
            os.close(self.fd)
            raise

    def attach(self, port: Port) -> None:
        self.port = port
        port.link = self

    def detach(self, port: Port) -> None:
        self.close()

    def forward(self, src: Port, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
        except (BlockingIOError, OSError):
            pass  # the host's queue is full or the interface is down: dropped, as a NIC does

    async def reader(self) -> None:
        """Frames the host sends to the guest, into the port's queue."""
        while self.fd >= 0:
            await trio.lowlevel.wait_readable(self.fd)
            while self.fd >= 0:
                try:
                    frame = os.read(self.fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    return
                if self.port is not None:
                    self.port.deliver(frame)

    def close_fd(self) -> None:
        """Close the TAP's file descriptor (from the trio thread)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def close(self) -> None:
        """Remove the interface (blocking: may run in a worker thread)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if self.ifname:
            _ip("link", "del", "dev", self.ifname, check=False)
            (_record_dir(self.rundir) / f"tap.{self.ifname}").unlink(missing_ok=True)
            self.ifname = ""


def cleanup(rundir: Path) -> list[str]:
    """Remove the TAPs backendd made and the bridges it created (``pvxen down``).
    Returns the interface names removed."""
    d = Path(rundir) / "backendd" / "net"
    removed: list[str] = []
    if not d.is_dir():
        return removed
    for f in sorted(d.glob("tap.*")) + sorted(d.glob("bridge.*")):
        name = f.name.split(".", 1)[1]
        if _ip("link", "del", "dev", name, check=False).returncode == 0:
            removed.append(name)
        f.unlink(missing_ok=True)
    return removed
