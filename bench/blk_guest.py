"""The guest of ``bench blk``: opens its vbd, then runs each case the
controller writes to ``~/data/bench/cmd`` (JSON with a ``seq``) and
answers in ``~/data/bench/result``. Argument: the ring page order."""

import json

from bench.blk_work import PvIO, run_case
from frontends.blkfront import BlockDevice


async def main(domain):
    xs = await domain.open_xenbus()
    home = f"/local/domain/{domain.domid}/data/bench"
    order = int(domain.args[0]) if domain.args else 0
    async with BlockDevice.open(domain, ring_page_order=order) as disk:
        await xs.write(f"{home}/ready", json.dumps({"ring": disk.front.nr_ents,
                                                    "persistent": disk.persistent,
                                                    "indirect": disk.max_indirect_segments}))
        done = 0
        async with xs.watch(f"{home}/cmd") as events:
            async for _ in events:
                try:
                    cmd = json.loads(await xs.read(f"{home}/cmd"))
                except (OSError, ValueError):
                    continue
                if cmd["seq"] <= done:
                    continue
                done = cmd["seq"]
                if cmd.get("quit"):
                    break
                res = await run_case(PvIO(disk), cmd)
                await xs.write(f"{home}/result", json.dumps({**res, "seq": done,
                                                             "stats": disk.stats}))
