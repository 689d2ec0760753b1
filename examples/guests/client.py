"""Demo guest 1 ("client"): pings "web" and fetches its page over TCP.

``cmdline = "server=10.0.0.2"`` names the server. Everything goes
netfront -> backendd's netback -> the bridge -> netback -> netfront of the
other guest, through a TCP/IP stack in each (PyTCP, ``frontends/netstack.py``).
"""

import trio

from frontends.blkfront import BlockDevice
from frontends.netstack import NetStack


async def say(domain, text: str) -> None:
    """On the guest's console (backendd's pty and guest-<name>.log; ``xl console``)
    and on stdout (xl's launcher log, which the demo watches)."""
    print(text, flush=True)
    await domain.console.print(text)


async def fetch(net, server: str) -> bytes:
    for attempt in range(40):
        s = net.socket(net.AF_INET, net.SOCK_STREAM)
        try:
            await net.run(s.connect, (server, 80))
            break
        except Exception as e:  # PyTCP's socket errors: the server may not listen yet
            if attempt == 39:
                raise
            await trio.sleep(0.5)
    await net.run(s.send, b"GET / HTTP/1.0\r\nHost: " + server.encode() + b"\r\n\r\n")
    data = b""
    while chunk := await net.run(s.recv):
        data += chunk
    await net.run(s.close)
    return data


async def main(domain):
    args = dict(a.split("=", 1) for a in domain.args if "=" in a)
    server = args.get("server", "10.0.0.2")
    await say(domain, f"{domain.name}: domain {domain.domid} up, talking to {server}")
    async with BlockDevice.open(domain) as disk, NetStack.open(domain) as net:
        first = await disk.read(0, 512)
        await say(domain, f"disk hda: {disk.sectors} sectors, first sector "
            f"{'blank' if first == bytes(512) else 'written'}")
        rtts = await net.ping(server, count=3)
        await say(domain, f"ping {server}: {len(rtts)}/3 replies, " +
            ", ".join(f"{rtt * 1000:.1f} ms" for rtt in rtts))
        page = await fetch(net, server)
        head, _, body = page.partition(b"\r\n\r\n")
        await say(domain, f"GET http://{server}/ -> {head.splitlines()[0].decode()}: "
                  f"{body.decode().strip()}")
        reason = await domain.wait_for_shutdown()
        await say(domain, f"shutdown requested (reason {reason}), goodbye")
