"""Demo guest 2 ("web"): checks its disk, then serves a page over TCP.

Its disk (``xvda``, blkfront -> backendd's blkback -> the image file) gets
a 1 MiB blob written, flushed and read back; its vif (netfront ->
backendd's netback -> the bridge) carries a TCP/IP stack (PyTCP, see
``frontends/netstack.py``) with the vif's ``ip``, which answers pings and
serves one page on port 80 to every connection, until shutdown.
"""

import hashlib
import os
import sys

import trio

from frontends.blkfront import BlockDevice
from frontends.netstack import NetStack


async def say(domain, text: str) -> None:
    """On the guest's console (backendd's pty and guest-<name>.log; ``xl console``)
    and on stdout (xl's launcher log, which the demo watches)."""
    print(text, flush=True)
    await domain.console.print(text)


async def check_disk(domain, disk) -> None:
    blob, offset = os.urandom(1 << 20), 1 << 20
    await disk.write(offset, blob)
    await disk.flush()
    back = await disk.read(offset, len(blob))
    await say(domain, f"disk xvda: {disk.sectors} sectors of {disk.sector_size} B; "
              f"wrote {len(blob)} B, flushed, read back: {'OK' if back == blob else 'MISMATCH'} "
              f"(sha1 {hashlib.sha1(back).hexdigest()[:12]})")


async def serve(net, domain) -> None:
    s = net.socket(net.AF_INET, net.SOCK_STREAM)
    s.bind(("0.0.0.0", 80))
    s.listen()
    await say(domain, f"web: listening on {net.ip} port 80")
    served = 0
    while True:
        conn, _ = await net.run(s.accept)
        await net.run(conn.recv)
        served += 1
        body = f"hello from {domain.name} (domain {domain.domid}), request {served}\n"
        await net.run(conn.send, f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n{body}"
                      .encode())
        await net.run(conn.close)


async def main(domain):
    await say(domain, f"{domain.name}: domain {domain.domid} up, "
              f"{domain.start_info.nr_pages} pages")
    async with BlockDevice.open(domain) as disk:  # kept connected while the guest runs
        await check_disk(domain, disk)
        await serve_until_shutdown(domain)


async def serve_until_shutdown(domain) -> None:
    async with NetStack.open(domain) as net, trio.open_nursery() as nursery:
        nursery.start_soon(serve, net, domain)
        reason = await domain.wait_for_shutdown()
        await say(domain, f"shutdown requested (reason {reason}), goodbye")
        nursery.cancel_scope.cancel()
    sys.stdout.flush()
