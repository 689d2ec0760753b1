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
