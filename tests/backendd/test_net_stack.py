"""The PyTCP stack over netfront in a program guest, on a real bridge with
an address: dom0 pings the guest (ARP + ICMP echo) and fetches a page from
a TCP server in it."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from backendd import bridge
from examples.demo import dom0_ping
from tests.backendd.test_net_live import REAL, _bridge_name
from tests.framework.hostres import HOST_NET
from tests.toolstack.stack import stack, start_backendd, write_guest  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(90)
needs_real = pytest.mark.skipif(not REAL, reason="needs root and /dev/net/tun")

SERVER = r'''
import sys
import trio
from frontends.netstack import NetStack

async def main(domain):
    async with NetStack.open(domain) as net:
        s = net.socket(net.AF_INET, net.SOCK_STREAM)
        s.bind(("0.0.0.0", 8080))
        s.listen()
        print("LISTENING", net.ip, file=sys.stderr, flush=True)
        while True:
            conn, _ = await net.run(s.accept)
            req = await net.run(conn.recv)
            await net.run(conn.send, b"HTTP/1.0 200 OK\r\n\r\nhello from " + domain.name.encode())
            await net.run(conn.close)
'''


@needs_real
@HOST_NET
def test_dom0_pings_and_fetches_from_a_guest(stack, start_backendd, tmp_path, monkeypatch):
    br = _bridge_name()
    net = f"10.{os.getpid() % 200 + 20}.{os.getpid() % 250}"
    monkeypatch.setenv("PVXEN_BRIDGE_ADDRESS", f"{net}.254/24")
    be = start_backendd()
    try:
        stack.xl_ok("create", str(write_guest(tmp_path, "web", SERVER,
                    f"vif = [ 'mac=00:16:3e:00:01:01,bridge={br},ip={net}.2' ]\n", memory=16)))
        stack.wait(lambda: "LISTENING" in stack.guest_log("web"), "the server", timeout=30)
        assert dom0_ping(f"{net}.2", count=5), stack.guest_log("web") + be.log()[-2000:]
        with socket.create_connection((f"{net}.2", 8080), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        assert data.endswith(b"hello from web"), data
    finally:
        bridge.cleanup(stack.rundir)
        subprocess.run(["ip", "link", "del", "dev", br], capture_output=True)


CLIENT = r'''
import sys
import trio
from frontends.netstack import NetStack

async def main(domain):
    server = domain.args[0]
    async with NetStack.open(domain) as net:
        rtts = await net.ping(server, count=3)
        print("PINGED", len(rtts), file=sys.stderr, flush=True)
        assert await net.ping("10.66.1.99", count=1, timeout=0.3) == []  # nobody there
        for attempt in range(20):
            s = net.socket(net.AF_INET, net.SOCK_STREAM)
            try:
                await net.run(s.connect, (server, 8080))
                break
            except Exception as e:
                print("RETRY", e, file=sys.stderr, flush=True)
                await trio.sleep(0.5)
        await net.run(s.send, b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = await net.run(s.recv)
            if not chunk:
                break
            data += chunk
        print("FETCHED", data.split(b"\r\n\r\n", 1)[1].decode(), file=sys.stderr, flush=True)
        await trio.sleep_forever()
'''


@pytest.mark.parametrize("link", ["switch", pytest.param("bridge", marks=[needs_real, HOST_NET])])
def test_guest_pings_and_fetches_a_page_from_another_guest(stack, start_backendd, tmp_path, monkeypatch, link):
    br = _bridge_name()
    if link == "switch":
        monkeypatch.setenv("PVXEN_NET_SWITCH", "1")
    net = "10.66.1"
    be = start_backendd()
    try:
        (tmp_path / "s").mkdir()
        (tmp_path / "c").mkdir()
        stack.xl_ok("create", str(write_guest(tmp_path / "s", "web", SERVER,
                    f"vif = [ 'mac=00:16:3e:00:01:01,bridge={br},ip={net}.2' ]\n", memory=16)))
        stack.wait(lambda: "LISTENING" in stack.guest_log("web"), "the server", timeout=30)
        stack.xl_ok("create", str(write_guest(tmp_path / "c", "client", CLIENT,
                    f"vif = [ 'mac=00:16:3e:00:01:02,bridge={br},ip={net}.3' ]\n"
                    f'cmdline = "{net}.2"\n', memory=16)))
        log = stack.wait(lambda: "FETCHED" in stack.guest_log("client") and stack.guest_log("client"),
                         "the fetch", timeout=40)
        assert "FETCHED hello from web" in log
        assert "PINGED 3" in log  # guest to guest ICMP echo, through both netbacks
        d = stack.domid_of("client")
        assert stack.read(f"/local/domain/0/backend/vif/{d}/0/pvxen-link") == link
    finally:
        bridge.cleanup(stack.rundir)
        subprocess.run(["ip", "link", "del", "dev", br], capture_output=True)
