"""A program guest that counts: ``data/counter`` goes up once per interval.

Watch it from dom0 with ``xenstore-watch /local/domain/<id>/data/counter``;
``xl shutdown counter`` ends it cleanly. The interval comes from the
command line (``interval=<seconds>``). If xenstored restarts, a write in
flight fails with ``XsConnectionLost`` (the new daemon dropped it when the
ring was reset); the counter writes it again on the new connection.
"""

import trio

from libxen.xenstore.aio import XsConnectionLost


def _interval(cmdline: str) -> float:
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == "interval":
            return max(0.05, float(value))
    return 1.0


async def main(domain):
    interval = _interval(domain.start_info.cmd_line)
    xs = await domain.open_xenbus()
    path = f"/local/domain/{domain.domid}/data/counter"
    print(f"counter in domain {domain.domid}: writing {path} every {interval}s", flush=True)
    count = 0
    async with trio.open_nursery() as nursery:
        async def tick():
            nonlocal count
            while True:
                count += 1
                while True:
                    try:
                        await xs.write(path, str(count))
                        break
                    except XsConnectionLost:
                        continue  # the client waits for the ring to be reconnected
                await trio.sleep(interval)

        nursery.start_soon(tick)
        reason = await domain.wait_for_shutdown()
        nursery.cancel_scope.cancel()
    print(f"counted to {count}; shutdown ({reason})", flush=True)
