"""hypervisord's trio shell: sockets, connections, notifications, fd passing.

Two kinds of connection reach the dispatcher:

* dom0 processes connect to ``<rundir>/hypervisord/privcmd`` (mode 0600 in
  a 0700 directory: only dom0's user opens it) and are privileged;
* a domU process never opens a socket of ours: the toolstack asks for
  ``pvxen_op.connect_domain`` and hands the process one end of a
  socketpair that is bound to that domid here. The kernel stamps each of
  its messages with the sender's pid (``SO_PASSCRED``), which is how
  hypervisord learns which process is the domain (to stop it on pause and
  to notice its death).

A connection belongs to one domain *instance* (the :class:`Domain` record
it was made for), never to a domid number: when that
domain is destroyed hypervisord shuts every connection of it down, and a
request still queued on one is refused, not answered as whatever domain
holds the number by then. So a process that outlives its domain (a
guest's double-forked child holding an inherited descriptor) can neither
act as a later domain with the same domid nor, by closing, destroy it.

Each connection has an event-channel stream: notifications are u32 port
numbers, written only when a port's pending bit goes 0 -> 1, so many sends
before the receiver looks coalesce into one (a PV vCPU process that owns
its bits gets an entry per send to a port not yet pending:
``hypervisord/evtchn.py``). Entries the socket cannot take wait in the
connection, deduplicated: a process that does not read (SIGSTOPped while
its domain is paused) costs at most one entry per port, and hypervisord
never blocks on it.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from pathlib import Path

import trio

from libxen import rpc
from hypervisord.errors import E, fail
from hypervisord.hypercall import Caller, Dispatcher, Handler, int_list, u
from daemonkit import daemon
from hypervisord.public.pvxen import EVTCHN_NOTIFY_DOORBELL, HYPERVISOR_pvxen_op, PvxenOp

log = logging.getLogger("hypervisord")
_PORT = struct.Struct("<I")
_CREDS = struct.Struct("iII")


class Connection:
    """One attached process, as hypervisord sees it."""

    def __init__(self, server: "HvServer", sock: trio.socket.SocketType, domain,
                 privileged: bool) -> None:
        self.server = server
        self.sock = sock
        self.domain = domain  # the hypervisord.domain.Domain instance, for good
        self.domid = domain.domid
        self.privileged = privileged
        self.caller = Caller(self.domid, privileged, self)
        self.evtchn_sock: socket.socket | None = None
        self.pending_ports: dict[int, None] = {}
        self.outbuf = bytearray()  # notification bytes the socket did not take yet
        self.doorbells = False  # the process understands doorbell entries
        self.vcpu_bits = False  # the process sets its domain's event bits itself
        self.wakeup = trio.Event()
        self.pid: int | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"conn(d{self.domid}{', pid %d' % self.pid if self.pid else ''})"

    @property
    def stale(self) -> bool:
        """Its domain is gone (the domid may name a newer domain by now)."""
        return self.domain.dying or self.server.hv.domains.get(self.domid) is not self.domain

    def shut(self) -> None:
        """End the connection from our side: its holders read EOF, and our
        reader task sees it too and runs the close hooks (:meth:`HvServer._closed`)."""
        for sock in (self.sock, self.evtchn_sock):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def notify(self, port: int) -> None:
        """Queue a notification; try to deliver it at once without a task switch."""
        if self.evtchn_sock is None or self.closed:
            return
        self.pending_ports[port] = None
        self._flush_nowait()

    def _flush_nowait(self) -> None:
        """Write what fits; a partly written entry is finished before anything
        else, so the u32 stream never loses its alignment."""
        if self.evtchn_sock is None:
            return
        if self.pending_ports and not self.outbuf:
            # only when the socket took everything before: until then new
            # entries wait here, deduplicated, so a reader that does not
            # read (a paused domain) costs a bounded queue, never a blocked
            # daemon nor a lost entry
            self.outbuf += b"".join(_PORT.pack(p) for p in self.pending_ports)
            self.pending_ports.clear()
        if not self.outbuf:
            return
        try:
            sent = self.evtchn_sock.send(self.outbuf, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.outbuf.clear()
            return
        del self.outbuf[:sent]
        if self.outbuf or self.pending_ports:
            self.wakeup.set()

    def push_doorbell(self, port: int, fd: int) -> bool:
        """Hand this process a doorbell for ``port`` (pvxen.EVTCHN_NOTIFY_DOORBELL).

        Only when nothing is queued on the stream, so the entry and its
        descriptor travel together; otherwise the caller keeps using
        hypercalls for that channel, which is always correct.
        """
        if (not self.doorbells or self.evtchn_sock is None or self.closed or self.outbuf
                or self.pending_ports):
            return False
        try:
            sent = self.evtchn_sock.sendmsg([_PORT.pack(port | EVTCHN_NOTIFY_DOORBELL)],
                                           rpc.fds_ancillary([fd]), socket.MSG_DONTWAIT)
        except OSError:
            return False
        if sent != _PORT.size:  # cannot happen for 4 bytes on an empty queue
            log.error("%s: doorbell entry cut at %d bytes", self, sent)
            self.outbuf += _PORT.pack(port | EVTCHN_NOTIFY_DOORBELL)[sent:]
        return True

    async def notifier(self) -> None:
        """Delivers notifications the socket could not take at once."""
        assert self.evtchn_sock is not None
        while not self.closed:
            await self.wakeup.wait()
            self.wakeup = trio.Event()
            while (self.outbuf or self.pending_ports) and not self.closed:
                await trio.lowlevel.wait_writable(self.evtchn_sock)
                self._flush_nowait()


class HvServer:
    def __init__(self, hv, dispatcher: Dispatcher, nursery: trio.Nursery) -> None:
        self.hv = hv
        self.dispatcher = dispatcher
        self.nursery = nursery
        self.connections: set[Connection] = set()
        #: called with each connection that goes away (evtchn, gnttab clean up)
        self.conn_closed_hooks: list = []
        hv.notify = lambda conn, port: conn.notify(port)
        hv.on_destroy.append(self._domain_destroyed)
        dispatcher.table.update(self.pvxen_handlers())

    # -- listening -------------------------------------------------------------
    async def listen(self, path: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        daemon.claim_socket_path(path, socket.SOCK_SEQPACKET)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(64)
        task_status.started()
        with sock:
            while True:
                client, _ = await sock.accept()
                rpc.size_buffers(client)
                conn = Connection(self, client, self.hv.dom0, privileged=True)
                self.nursery.start_soon(self.serve, conn)

    # -- serving ---------------------------------------------------------------------
    async def serve(self, conn: Connection) -> None:
        self.connections.add(conn)
        dom = conn.domain
        if conn not in dom.conns and not conn.stale:
            dom.conns.append(conn)
        log.debug("%s attached", conn)
        try:
            if conn.stale:
                return  # destroyed before we got to serve it
            async with trio.open_nursery() as nursery:
                if conn.evtchn_sock is not None:
                    nursery.start_soon(conn.notifier)
                await self._requests(conn)
                nursery.cancel_scope.cancel()
        except Exception:  # a bug costs this connection, never the hypervisor
            log.exception("%s: internal error, connection dropped", conn)
        finally:
            self._closed(conn)

    async def _requests(self, conn: Connection) -> None:
        anc = rpc.ancillary_space() + socket.CMSG_SPACE(_CREDS.size)
        while True:
            try:
                data, ancdata, flags, _ = await conn.sock.recvmsg(rpc.MAX_PACKET, anc)
            except OSError:
                return
            if not data:
                return
            for fd in rpc.fds_from_ancillary(ancdata):
                os.close(fd)  # nobody may push descriptors into hypervisord
            if conn.stale:
                log.info("%s: request after its domain was destroyed: refused", conn)
                return
            if conn.pid is None and not conn.privileged:
                self._learn_pid(conn, ancdata)
            if flags & socket.MSG_TRUNC:
                log.warning("%s: request larger than %d bytes, disconnecting",
                            conn, rpc.MAX_PACKET)
                return
            try:
                req = rpc.decode_request(data)
            except rpc.RpcError as e:
                log.warning("%s: bad request, disconnecting: %s", conn, e)
                return
            rc, result = self.dispatcher.call(conn.caller, req.hypercall, req.subop, req.args)
            await self._reply(conn, req.req_id, rc, result)

    def _learn_pid(self, conn: Connection, ancdata) -> None:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _, _ = _CREDS.unpack(data[:_CREDS.size])
                conn.pid = pid
                if conn.domain.pid is None:
                    self.hv.attached(conn.domain, pid)

    async def _reply(self, conn: Connection, req_id: int, rc: int, result) -> None:
        fds: list[int] = []
        if result and "_fds" in result:
            named = result.pop("_fds")
            result["fds"] = list(named)
            fds = list(named.values())
        packet = rpc.encode_reply(rpc.Reply(req_id, rc, result))
        if len(packet) > rpc.MAX_PACKET:  # never leave a caller waiting forever
            log.error("%s: reply of %d bytes is too large; answering E2BIG", conn, len(packet))
            packet = rpc.encode_reply(rpc.Reply(req_id, -int(E.XEN_E2BIG), {"error": "reply too large"}))
            for fd in fds:
                os.close(fd)
            fds = []
        try:
            # trio's send, scheduler pass included: writing with os.write and
            # going straight back to recvmsg saved ~2 us CPU per call but made
            # the daemon fall asleep before a blocking caller's next request
            # arrived (null hypercall 0.72x -> 0.88x the echo server with it)
            if fds:
                await conn.sock.sendmsg([packet], rpc.fds_ancillary(fds))
            else:
                await conn.sock.send(packet)
        except OSError as e:
            log.debug("%s: reply not sent: %s", conn, e)
        finally:
            for fd in fds:
                os.close(fd)

    def _closed(self, conn: Connection) -> None:
        conn.closed = True
        self.connections.discard(conn)
        for hook in self.conn_closed_hooks:
            hook(conn)
        if conn.evtchn_sock is not None:
            conn.evtchn_sock.close()
        conn.sock.close()
        dom = conn.domain  # never whichever domain has the number now
        if conn in dom.conns:
            dom.conns.remove(conn)
        if not conn.privileged and not dom.conns and not conn.stale:
            # The domain's process is gone: a domain without a shutdown
            # reason crashed. Either way it is torn down now.
            if dom.shutdown_code is None:
                self.hv.shutdown(dom, 3)  # SHUTDOWN_crash
            self.hv.destroy(dom)
        log.debug("%s detached", conn)

    def _domain_destroyed(self, dom) -> None:
        """``on_destroy``: every connection of the instance ends with it."""
        for conn in list(dom.conns):
            conn.shut()

    # -- pvxen ops: the fds Xen's kernel drivers stand for ------------------------------
    def _evtchn_pair(self, conn: Connection) -> int:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setblocking(False)
        conn.evtchn_sock = mine
        return theirs.detach()

    def attach(self, hv, caller, args):
        conn = caller.conn
        if conn.evtchn_sock is not None:
            raise fail(E.XEN_EEXIST, "already attached")
        dom = conn.domain
        evtchn_fd = self._evtchn_pair(conn)
        self.nursery.start_soon(conn.notifier)
        return {"domid": dom.domid, "max_gfns": dom.mem.max_gfns,
                "_fds": {"evtchn": evtchn_fd, "memory": hv.mem.hand_out(dom.mem)}}

    def connect_domain(self, hv, caller, args):
        dom = hv.domain(u(args, "domid", 16))
        if dom.domid == 0 or dom.conns or dom.dying:
            raise fail(E.XEN_EBUSY, f"domain {dom.domid} already has its process")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rpc.size_buffers(mine)
        rpc.size_buffers(theirs)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        conn = Connection(self, trio.socket.from_stdlib_socket(mine), dom, False)
        evtchn_fd = self._evtchn_pair(conn)
        dom.conns.append(conn)  # counts as attached from now on
        self.nursery.start_soon(self.serve, conn)
        return {"domid": dom.domid, "_fds": {"hypercall": theirs.detach(), "evtchn": evtchn_fd,
                                             "memory": hv.mem.hand_out(dom.mem)}}

    def map_foreign(self, hv, caller, args):
        """privcmd: the domain's memory file; ``gfns`` (optional) are checked
        and the populated ones returned, so the caller maps only real frames."""
        dom = hv.domain(u(args, "domid", 16))
        gfns = int_list(args, "gfns", 4096) if "gfns" in args else []
        return {"domid": dom.domid, "max_gfns": dom.mem.max_gfns,
                "nr_pages": dom.mem.tot_pages,
                "populated": [g for g in gfns if g in dom.mem.p2m],
                "_fds": {"memory": hv.mem.hand_out(dom.mem)}}

    def evtchn_doorbells(self, hv, caller, args):
        if caller.conn.evtchn_sock is None:
            raise fail(E.XEN_EINVAL, "no event-channel stream on this connection")
        caller.conn.doorbells = True

    def max_vcpus(self, hv, caller, args):
        return {"max_vcpus": caller.conn.domain.max_vcpus}

    def evtchn_vcpu_bits(self, hv, caller, args):
        """The domU's vCPU process owns its event bits (``hypervisord/evtchn.py``)."""
        if caller.domid == 0:
            raise fail(E.XEN_EPERM, "dom0's processes share shared_info: hypervisord sets it")
        if caller.conn.evtchn_sock is None:
            raise fail(E.XEN_EINVAL, "no event-channel stream on this connection")
        caller.conn.vcpu_bits = True

    def pvxen_handlers(self) -> dict:
        P = HYPERVISOR_pvxen_op
        return {
            (P, PvxenOp.evtchn_doorbells): Handler(self.evtchn_doorbells),
            (P, PvxenOp.evtchn_vcpu_bits): Handler(self.evtchn_vcpu_bits),
            (P, PvxenOp.attach): Handler(self.attach),
            (P, PvxenOp.connect_domain): Handler(self.connect_domain, privileged=True),
            (P, PvxenOp.map_foreign): Handler(self.map_foreign, privileged=True),
            (P, PvxenOp.max_vcpus): Handler(self.max_vcpus),
        }
