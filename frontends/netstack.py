"""A TCP/IP stack for program guests over netfront: PyTCP (PyPI ``PyTCP``).

PyTCP is a kept pure-Python stack (ARP, IPv4, ICMP echo, UDP, TCP) that
reads and writes whole Ethernet frames on a TAP file descriptor in its own
threads (``os.read``/``os.write``). Here one end of a
``socketpair(AF_UNIX, SOCK_DGRAM)`` stands in for the TAP: two trio tasks
pump frames between its other end and :class:`frontends.netfront.NetDevice`.
The address is the vif's ``ip`` (the backend's ``ip`` key, from xl.cfg's
``vif = [ 'ip=...' ]``), a /24 unless the key carries a prefix.

    async with NetStack.open(domain) as net:
        s = net.socket(net.AF_INET, net.SOCK_STREAM)      # PyTCP's socket API
        await net.run(s.bind, ("0.0.0.0", 80))            # blocking calls: in a thread
        rtts = await net.ping("10.0.0.2", count=3)         # ICMP echo, round trips in s

PyTCP answers pings but has no call that sends one and waits for the
reply: :meth:`NetStack.ping` asks PyTCP's packet handler to send the echo
request (so ARP and routing stay PyTCP's) and picks the echo replies out
of the frames on their way from netfront to the stack.
"""

from __future__ import annotations

import itertools
import os
import socket as _socket
import struct
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from frontends.netfront import NetDevice


class NetStack:
    def __init__(self, nic: NetDevice, ip: str) -> None:
        self.nic = nic
        self.ip = ip
        self._echo_id = os.getpid() & 0xFFFF
        self._echo_seq = itertools.count(1)
        self._echo_waiters: dict[tuple[str, int], trio.Event] = {}

    @classmethod
    @asynccontextmanager
    async def open(cls, domain: Any, devid: int | None = None,
                   ip: str | None = None) -> AsyncIterator["NetStack"]:
        import pytcp
        from pytcp import config
        from pytcp.lib import socket as psocket

        async with NetDevice.open(domain, devid) as nic:
            ip = ip or await nic.dev.read_backend("ip")
            if not ip:
                raise ValueError(f"{nic.dev.backend}: no ip key for this vif")
            ip = ip.split()[0]
            if "/" not in ip:
                ip += "/24"
            ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            for s in (ours, theirs):
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 1 << 20)
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 1 << 20)
            config.IP6_SUPPORT = False
            # PyTCP logs every frame to stdout (the guest's console) by default:
            # only the channels named in PVXEN_PYTCP_LOG (e.g. "stack,tcp").
            config.LOG_CHANEL = set(os.environ.get("PVXEN_PYTCP_LOG", "").split(",")) - {""}
            # TcpIpStack.__init__ opens /dev/net/tun: build it without that,
            # handing it our end of the pair as its "TAP".
            stack = object.__new__(pytcp.TcpIpStack)
            from pytcp.lib import stack as pstack
            from pytcp.lib.ip4_address import Ip4Host
            from pytcp.lib.mac_address import MacAddress
            pstack.packet_handler.assign_mac_address(mac_unicast=MacAddress(nic.mac.hex(":")))
            pstack.packet_handler.assign_ip4_address(Ip4Host(ip))
            config.IP4_SUPPORT = True
            config.IP4_HOST_DHCP = False
            stack.tap = theirs.fileno()
            self = cls(nic, ip)
            self.socket = psocket.socket
            self.AF_INET, self.SOCK_STREAM, self.SOCK_DGRAM = (
                psocket.AF_INET4, psocket.SOCK_STREAM, psocket.SOCK_DGRAM)
            tsock = trio.socket.from_stdlib_socket(ours)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._to_stack, tsock)
                nursery.start_soon(self._from_stack, tsock)
                await trio.to_thread.run_sync(stack.start)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()

    async def _to_stack(self, sock) -> None:
        while True:
            frame = await self.nic.recv()
            if self._echo_waiters:
                self._see_echo_reply(frame)
            await sock.send(frame)

    def _see_echo_reply(self, frame: bytes) -> None:
        """An ICMP echo reply to one of our pings wakes its waiter."""
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            return
        ihl = (frame[14] & 0x0F) * 4
        if frame[14 + 9] != 1 or len(frame) < 14 + ihl + 8:  # not ICMP
            return
        icmp = 14 + ihl
        kind, ident, seq = frame[icmp], *struct.unpack_from("!HH", frame, icmp + 4)
        if kind == 0 and ident == self._echo_id:
            src = _socket.inet_ntoa(frame[14 + 12:14 + 16])
            ev = self._echo_waiters.get((src, seq))
            if ev is not None:
                ev.set()

    async def ping(self, addr: str, count: int = 3, timeout: float = 2.0,
                   payload: bytes = b"pvxen ping") -> list[float]:
        """ICMP echo to ``addr``, ``count`` times; the round trips (seconds) of
        those answered within ``timeout`` each. The first request may go to
        ARP resolution only (PyTCP drops a packet whose next hop it does not
        know yet): an unanswered one is sent once more."""
        from pytcp.lib import stack as pstack
        from pytcp.lib.ip4_address import Ip4Address
        from pytcp.protocols.icmp4.ps import ICMP4_ECHO_REQUEST

        rtts: list[float] = []
        for _ in range(count):
            for attempt in range(2):
                seq = next(self._echo_seq) & 0xFFFF
                ev = self._echo_waiters[(addr, seq)] = trio.Event()
                t0 = time.monotonic()
                try:
                    pstack.packet_handler._phtx_icmp4(
                        ip4_src=Ip4Address(self.ip.split("/")[0]), ip4_dst=Ip4Address(addr),
                        icmp4_type=ICMP4_ECHO_REQUEST, icmp4_ec_id=self._echo_id,
                        icmp4_ec_seq=seq, icmp4_ec_data=payload)
                    with trio.move_on_after(timeout):
                        await ev.wait()
                finally:
                    del self._echo_waiters[(addr, seq)]
                if ev.is_set():
                    rtts.append(time.monotonic() - t0)
                    break
        return rtts

    async def _from_stack(self, sock) -> None:
        while True:
            frame = await sock.recv(70000)
            if len(frame) >= 14:
                await self.nic.send(frame)

    async def run(self, fn, *args):
        """A blocking PyTCP socket call, in a thread."""
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
