"""``xenstored``: the XenStore daemon (``python -m xenstored``).

Listens on ``<rundir>/xenstored/socket`` (or ``--socket``); libxenstore
clients find it with ``XENSTORED_PATH=<socket>`` or
``XENSTORED_RUNDIR=<rundir>/xenstored``. State is journalled in
``--state-dir`` (default ``<rundir>/xenstored``) before each reply, so that
every acknowledged write survives a crash and restart of xenstored. Watches are per connection and are not
persisted: clients re-register them after reconnecting (our client library
does so itself).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from daemonkit import daemon
from xenstored.handlers import new_core
from xenstored.quota import Quotas
from xenstored.service import XenstoreService
from xenstored.transport.unix import UnixServer
from xenstored.store import Store

log = logging.getLogger("xenstored")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xenstored", description=__doc__.split("\n")[0])
    daemon.add_common_arguments(p)
    p.add_argument("--socket", help="socket path (default <rundir>/xenstored/socket)")
    p.add_argument("--state-dir", help="journal directory (default <rundir>/xenstored)")
    p.add_argument("--no-persist", action="store_true",
                   help="keep the store in memory only (nothing survives a restart)")
    p.add_argument("--hypervisor", metavar="PATH",
                   help="hypervisord's privileged socket (default <rundir>/hypervisord/privcmd); "
                        "domains connect through their rings only when it is reachable")
    p.add_argument("--no-hypervisor", action="store_true",
                   help="serve the Unix socket only, never attach to hypervisord")
    p.add_argument("-Q", "--quota", action="append", default=[], metavar="NAME=VALUE",
                   help="quota for unprivileged domains, e.g. -Q nodes=2000 "
                        f"(names: {', '.join(Quotas.names())})")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="socket clients served at once, more are refused (default "
                        "1024, fewer under a low descriptor limit; 0: no limit, as cxenstored)")
    return p.parse_args(argv)


async def open_unix_listener(path: Path) -> trio.SocketListener:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    daemon.claim_socket_path(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)  # socket clients are dom0: only dom0's user may connect
    sock.listen(128)
    return trio.SocketListener(sock)


def open_store(state_dir: Path | None):
    """The store from the journal (or a fresh one), and the journal itself."""
    if state_dir is None:
        return Store(), None
    from xenstored.persist import Journal

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    daemon.lock_directory(state_dir, "state directory")  # held until we exit
    journal = Journal(state_dir)
    loaded = journal.load()
    if loaded is None:
        store = Store()
        log.info("new store in %s", state_dir)
    else:
        nodes, generation = loaded
        store = Store(nodes, generation)
        log.info("loaded %d nodes from %s", len(nodes), state_dir)
    journal.snapshot(store.nodes, store.generation)
    return store, journal


RETRY_MIN, RETRY_MAX = 0.05, 1.0  # seconds between attempts to reach hypervisord


async def attach_domains(service: XenstoreService, path: Path, state_dir: Path | None,
                         log: logging.Logger, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve domains' rings through hypervisord whenever it is there.

    dom0's socket never depends on it: while hypervisord is away (not yet
    started, or it died) xenstored serves the socket alone and tries again,
    quietly, until it is back; a hypervisord that comes back is a new boot
    (:func:`~xenstored.transport.ring.forget_previous_boot`). Started once
    the first attempt is over, so domains kept from before a restart of
    xenstored are served before dom0's tools can ask about them.
    """
    from xenstored.transport.ring import attach_hypervisor

    started, said, known_boot, delay = False, None, None, RETRY_MIN
    while True:
        why = None
        if not path.exists():
            why = "not running"
        else:
            try:
                async with trio.open_nursery() as nursery:
                    rings = await nursery.start(attach_hypervisor, service, path, state_dir,
                                                known_boot)
                    known_boot, said, delay = rings.boot_id, None, RETRY_MIN
                    log.info("attached to hypervisord at %s: domain rings are served", path)
                    if not started:
                        task_status.started()
                        started = True
            except* OSError as group:
                why = "; ".join(dict.fromkeys(str(e) or type(e).__name__ for e in _leaves(group)))
        if why is not None and said is None:
            if known_boot is None:
                log.info("no hypervisord at %s (%s): serving the socket only until it "
                         "comes", path, why)
            else:
                log.warning("hypervisord went away (%s): serving the socket only; "
                            "domain rings come back with it", why)
            said = why
        if not started:
            task_status.started()
            started = True
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


def _leaves(group: BaseException):
    if isinstance(group, BaseExceptionGroup):
        for e in group.exceptions:
            yield from _leaves(e)
    else:
        yield group


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rundir = daemon.runtime_dir(args.rundir)
    sock_path = Path(args.socket) if args.socket else rundir / "xenstored" / "socket"
    state_dir = None if args.no_persist else Path(args.state_dir or rundir / "xenstored")
    try:
        quotas = Quotas.from_options(args.quota)
    except ValueError as e:
        print(f"xenstored: {e}", file=sys.stderr)
        return 2
    if args.max_connections is not None and args.max_connections < 0:
        print("xenstored: --max-connections must be 0 (no limit) or more", file=sys.stderr)
        return 2

    async def body(nursery: trio.Nursery, log: logging.Logger) -> None:
        store, journal = open_store(state_dir)
        core = new_core(store, quotas)
        committer = None
        if journal is not None:
            from xenstored.durability import JournalCommitter

            committer = JournalCommitter(journal, lambda: (store.nodes, store.generation))
            await nursery.start(committer.run)
        service = XenstoreService(core, committer)
        if not args.no_hypervisor:
            await nursery.start(attach_domains, service, Path(args.hypervisor) if args.hypervisor
                                else rundir / "hypervisord" / "privcmd", state_dir, log)
        listener = await open_unix_listener(sock_path)
        server = UnixServer(service, args.max_connections)
        await nursery.start(server.serve, [listener])
        log.info("listening on %s", sock_path)

    return daemon.run("xenstored", body, verbose=args.verbose, stop_deadline=args.stop_deadline)


if __name__ == "__main__":
    sys.exit(main())
