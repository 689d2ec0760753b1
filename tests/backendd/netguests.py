"""Guest programs for the netback tests (text written into <name>.py by the tests)."""

#: echo: every frame back to its sender (source and destination swapped);
#: ping N SIZE PEERMAC: N frames of SIZE bytes to PEERMAC, each waiting for its echo.
FRAMES = r'''
import sys, time
import trio
from frontends.netfront import NetDevice

async def main(domain):
    role = domain.args[0]
    async with NetDevice.open(domain) as nic:
        print("UP", nic.mac.hex(":"), nic.sg, file=sys.stderr, flush=True)
        if role == "echo":
            while True:
                f = await nic.recv()
                await nic.send(f[6:12] + nic.mac + f[12:])
        n, size, peer = int(domain.args[1]), int(domain.args[2]), bytes.fromhex(domain.args[3].replace(":", ""))
        src = bytes.fromhex(domain.args[4].replace(":", "")) if len(domain.args) > 4 else nic.mac
        got = 0
        t0 = time.perf_counter()
        for i in range(n):
            body = i.to_bytes(4, "big") * (size // 4)
            frame = (peer + src + b"\x88\xb5" + body)[:size]
            await nic.send(frame)
            with trio.move_on_after(float(domain.args[5]) if len(domain.args) > 5 else 5):
                while True:
                    r = await nic.recv()
                    if r[14:] == frame[14:]:
                        got += 1
                        break
        dt = time.perf_counter() - t0
        print("PINGED", got, n, f"{dt:.4f}", file=sys.stderr, flush=True)
        await trio.sleep_forever()
'''

#: hostile tx: put hand-made tx requests on the ring, print the statuses seen.
#: modes: zero, count18, count19, count21, crosspage, reqprod
HOSTILE = r'''
import sys
import trio
from frontends.netfront import NetDevice
from hypervisord.public.io.netif import NETIF_TX_REQUEST, NETIF_TX_RESPONSE, NETTXF_more_data

async def main(domain):
    mode = domain.args[0]
    async with NetDevice.open(domain) as nic:
        nic._reap_tx = lambda: False  # we read the responses ourselves
        tx = nic.tx
        g = nic._tx_grefs
        def put(gref, off, flags, rid, size):
            tx.put_request(NETIF_TX_REQUEST.pack(gref, off, flags, rid, size))
        if mode == "zero":
            put(g[0], 0, 0, 7, 0)
        elif mode.startswith("count"):
            n = int(mode[5:])
            for k in range(n):
                put(g[k], 0, NETTXF_more_data if k < n - 1 else 0, k, 100 * n if k == 0 else 100)
        elif mode == "crosspage":
            put(g[0], 4000, 0, 3, 200)
        elif mode == "reqprod":
            put(g[0], 0, 0, 1, 60)
        tx.push_requests()
        if mode == "reqprod":
            tx.sring.req_prod = (tx.sring.rsp_prod + 1000) & 0xFFFFFFFF
        nic.evtchn.notify_soon(nic.port)
        await trio.sleep(1.0)
        statuses = [NETIF_TX_RESPONSE.unpack_from(r) for r in tx.take_responses()]
        print("STATUS", " ".join(f"{i}:{s}" for i, s in statuses), file=sys.stderr, flush=True)
        await trio.sleep_forever()
'''

#: a guest that connects and then never reads its rx ring.
DEAF = r'''
import sys
import trio
from frontends.netfront import NetDevice

async def main(domain):
    async with NetDevice.open(domain) as nic:
        nic._reap_rx = lambda: False
        print("UP", file=sys.stderr, flush=True)
        await trio.sleep_forever()
'''

#: floods broadcast frames: n frames of size bytes
FLOOD = r'''
import sys
import trio
from frontends.netfront import NetDevice

async def main(domain):
    n, size = int(domain.args[0]), int(domain.args[1])
    async with NetDevice.open(domain) as nic:
        frame = (b"\xff" * 6 + nic.mac + b"\x88\xb5" + bytes(size))[:size]
        for i in range(n):
            await nic.send(frame)
        print("FLOODED", n, file=sys.stderr, flush=True)
        await trio.sleep_forever()
'''
