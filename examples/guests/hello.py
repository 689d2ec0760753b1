"""A program guest: says hello, leaves a note in XenStore, waits for shutdown.

Run it with ``xl create examples/hello.cfg``. The domain's process runs
``main(domain)`` (see ``frontends/domain.py`` for what ``domain`` offers);
``xl shutdown hello`` writes ``control/shutdown`` and this returns.
"""

import trio


async def main(domain):
    info = domain.start_info
    print(f"hello from domain {domain.domid} ({domain.name}): {info.nr_pages} pages, "
          f"store page {info.store_mfn} port {info.store_evtchn}, "
          f"command line {info.cmd_line!r}", flush=True)
    try:
        xs = await domain.open_xenbus()
    except ModuleNotFoundError as e:
        print(f"no xenstore client yet ({e.name}); running without it", flush=True)
        await trio.sleep_forever()
    home = f"/local/domain/{domain.domid}"
    await xs.write(f"{home}/data/hello", "world")
    reason = await domain.wait_for_shutdown()
    print(f"shutdown requested (reason {reason}), goodbye", flush=True)
