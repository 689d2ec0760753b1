"""``make run``: bring the stack up, boot the demo guests, show what to look at.

Runs the same commands a user types: ``pvxen up`` (hypervisord, then
xenstored, each waited for until ready), ``xl create`` for each demo
guest, ``xl list``, and ``xenstore-ls``; shows what each guest printed on
its console (backendd's ``guest-<name>.log``) and how to attach to it
(``xl console web``). The daemons stay up afterwards so
the tools can be tried by hand; ``make stop`` (``pvxen down``) ends them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from examples.diskimage import DiskImageError, make_image
from libxen.paths import default_runtime_dir

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLES = REPO / "examples"
#: (config, what its log says when the guest has done its part)
GUESTS = [(EXAMPLES / "web.cfg", "web: listening"), (EXAMPLES / "client.cfg", "GET http://")]
IMAGE_SIZE = 16 << 20
BRIDGE_ADDRESS = "10.0.0.254/24"  # dom0 on xenbr0 (netback gives the bridge this address)
WEB = "10.0.0.2"
#: the third guest: Debian's PV GRUB (package grub-xen-host), shown at its prompt
GRUB_CFG = EXAMPLES / "grub.cfg"
PV_GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")
GRUB_FILES = {"hello.txt": b"hello from the grub guest's disk, read through blkfront/blkback\n",
              "docs/README": b"Made by examples/diskimage.py for make run.\n"}


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run(*argv: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    print("$ " + " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv)),
          flush=True)
    proc = subprocess.run(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          cwd=cwd)
    print(proc.stdout, end="", flush=True)
    if check and proc.returncode != 0:
        sys.exit(f"demo: {Path(argv[0]).name} failed with exit code {proc.returncode}")
    return proc


#: where each guest's output of this run starts in its log (xl appends to it)
_log_start: dict[str, int] = {}


def guest_log(rundir: Path, name: str) -> str:
    log = rundir / "xl" / "log" / f"guest-{name}.log"
    if not log.exists():
        return ""
    with open(log, "rb") as f:
        f.seek(_log_start.get(name, 0))
        return f.read().decode(errors="replace")


def mark_log(rundir: Path, name: str) -> None:
    log = rundir / "xl" / "log" / f"guest-{name}.log"
    _log_start[name] = log.stat().st_size if log.exists() else 0


def console_log(rundir: Path, name: str) -> Path:
    """backendd's copy of the guest's console (xenconsoled's guest-<name>.log)."""
    return rundir / "backendd" / "console" / f"guest-{name}.log"


def console_tail(rundir: Path, name: str, text: str, lines: int = 8,
                 timeout: float = 10.0) -> list[str]:
    """The last lines of the guest's console log, once ``text`` has reached it."""
    log, data = console_log(rundir, name), ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = log.read_text(errors="replace") if log.exists() else ""
        if text in data:
            break
        time.sleep(0.1)
    return [line.rstrip("\r") for line in data.splitlines()][-lines:]


def wait_for(rundir: Path, name: str, text: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in guest_log(rundir, name):
            return True
        time.sleep(0.2)
    print(f"demo: {name} did not get to {text!r} within {timeout:g} s; its log:")
    print(guest_log(rundir, name)[-3000:])
    return False


#: where the disk images go: ``<dir>/images/<guest>.img``; xl runs in ``<dir>``, so
#: the configs' relative ``target=images/...`` finds them (tests use their own)
DEMO_DIR = Path(os.environ.get("PVXEN_DEMO_DIR", EXAMPLES))


def domid_of(xl: str, name: str) -> str:
    return subprocess.run([xl, "domid", name], capture_output=True, text=True).stdout.strip()


def make_images() -> None:
    images = DEMO_DIR / "images"
    images.mkdir(parents=True, exist_ok=True)
    for cfg, _ in GUESTS:
        image = images / f"{cfg.stem}.img"
        if not image.exists():
            with open(image, "wb") as f:
                f.truncate(IMAGE_SIZE)  # sparse
            print(f"made {image} ({IMAGE_SIZE >> 20} MiB, sparse)")


def grub_guest(rundir: Path, xl: str) -> None:
    """The third guest: unmodified PV GRUB, at its ``grub>`` prompt; ``ls`` typed at it."""
    if not PV_GRUB.exists():
        print(f"{PV_GRUB} is not installed (Debian package grub-xen-host): no GRUB guest")
        return
    image = DEMO_DIR / "images" / "grub.img"
    if not image.exists():
        try:
            make_image(image, GRUB_FILES, label="pvxengrub")
        except DiskImageError as e:
            print(f"cannot make the GRUB guest's disk ({e}): no GRUB guest")
            return
        print(f"made {image} (16 MiB: MBR, ext2 on partition 1, partition 2 empty)")
    log = console_log(rundir, "grub")
    if subprocess.run([xl, "domid", "grub"], capture_output=True).returncode == 0:
        print("grub: already running")
        start, t0 = 0, None
    else:
        start = log.stat().st_size if log.exists() else 0
        t0 = time.monotonic()
        run(xl, "create", str(GRUB_CFG), cwd=DEMO_DIR)
    if not _console_until(log, start, b"grub> ", 60):
        print("demo: GRUB did not reach its prompt within 60 s; its console log:")
        print(_screen(log.read_bytes()[start:])[-2000:])
        return
    if t0 is not None:
        print(f"grub: at its prompt {time.monotonic() - t0:.1f} s after xl create")
    tty = _xs_read(f"/local/domain/{domid_of(xl, 'grub')}/console/tty")
    mark = log.stat().st_size
    if tty:  # type at it as `xl console grub` would: through its pty
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            os.write(fd, b"ls\r")
            _console_until(log, mark, b"grub> ", 10)
        finally:
            os.close(fd)
    # GRUB at its prompt polls its console ring (no hypercall) and keeps a CPU busy, as on Xen:
    # cap it as one would there, through the domain's cgroup (cpu.max)
    print("grub: polls at its prompt; capping it at 25% of a CPU:")
    run(xl, "sched-credit", "-d", "grub", "-c", "25", check=False)
    run(xl, "sched-credit", "-d", "grub", check=False)
    print(f"grub: console on {tty or '?'}, log {log}; its screen (the errors are its "
          "built-in config looking for a grub.cfg the disk does not have, so it stops at "
          "its prompt):")
    for line in _screen(log.read_bytes()[start:]).splitlines()[-12:]:
        print(f"  | {line}")


def _console_until(log: Path, start: int, text: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_bytes()[start:]:
            return True
        time.sleep(0.2)
    return False


def _screen(raw: bytes) -> str:
    """A console log without its terminal escapes (GRUB draws with ANSI codes)."""
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", raw).replace(b"\r", b"")
    return "\n".join(line.rstrip() for line in text.decode(errors="replace").splitlines()
                     if line.strip())


def _xs_read(path: str) -> str:
    sock = default_runtime_dir() / "xenstored" / "socket"
    return subprocess.run([tool("xenstore-read"), path], capture_output=True, text=True,
                          env=dict(os.environ, XENSTORED_PATH=str(sock))).stdout.strip()


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def dom0_ping(addr: str, count: int = 3) -> list[float]:
    """ICMP echo from dom0 over the bridge (a raw socket: root only)."""
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(2)
        for seq in range(count):
            body = struct.pack("!BBHHH", 8, 0, 0, 0x7078, seq) + b"pvxen-demo"
            t0 = time.monotonic()
            s.sendto(body[:2] + struct.pack("!H", _checksum(body)) + body[4:], (addr, 0))
            try:
                while True:
                    pkt, src = s.recvfrom(2048)
                    icmp = pkt[(pkt[0] & 15) * 4:]
                    if src[0] == addr and icmp[0] == 0 and icmp[4:8] == struct.pack("!HH", 0x7078, seq):
                        rtts.append(time.monotonic() - t0)
                        break
            except TimeoutError:
                continue
    return rtts


def dom0_reaches_web(rundir: Path, xl: str) -> None:
    domid = run(xl, "domid", "web").stdout.strip()
    link = run(tool("xenstore-read"), f"/local/domain/0/backend/vif/{domid}/0/pvxen-link",
               check=False).stdout.strip()
    if link != "bridge":
        print(f"the vifs are on backendd's in-process switch ({link or 'unknown'}): no real "
              "bridge on this host, so dom0 cannot reach the guests by IP")
        return
    run("ip", "-br", "addr", "show", "dev", "xenbr0", check=False)
    run("bridge", "link", check=False)
    rtts = dom0_ping(WEB)
    print(f"dom0 ping {WEB}: {len(rtts)}/3 replies " +
          ", ".join(f"{rtt * 1000:.1f} ms" for rtt in rtts))
    with socket.create_connection((WEB, 80), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
    body = data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
    print(f"dom0 GET http://{WEB}/ -> {body}")


def main() -> int:
    rundir = default_runtime_dir()
    os.environ["PVXEN_RUNDIR"] = str(rundir)
    socket = rundir / "xenstored" / "socket"

    banner(f"starting the daemons (runtime directory {rundir})")
    # netback gives the bridge it creates this address, so dom0 reaches the guests
    os.environ.setdefault("PVXEN_BRIDGE_ADDRESS", BRIDGE_ADDRESS)
    run(tool("pvxen"), "up")

    xl = str(BIN / "xl") if (BIN / "xl").exists() else "xl"
    banner("booting the demo guests (each with a disk and a vif on xenbr0)")
    make_images()
    for cfg, ready in GUESTS:
        name = cfg.stem
        if subprocess.run([xl, "domid", name], capture_output=True).returncode == 0:
            print(f"{name}: already running")
        else:
            mark_log(rundir, name)
            run(xl, "create", str(cfg), cwd=DEMO_DIR)
        wait_for(rundir, name, ready)
    banner("what the guests printed on their consoles (backendd: a pty each, and a log)")
    for cfg, ready in GUESTS:
        name = cfg.stem
        tty = subprocess.run([tool("xenstore-read"), f"/local/domain/{domid_of(xl, name)}"
                              "/console/tty"], capture_output=True, text=True,
                             env=dict(os.environ, XENSTORED_PATH=str(socket))).stdout.strip()
        print(f"{name}: console on {tty or '?'}, log {console_log(rundir, name)}")
        for line in console_tail(rundir, name, ready):
            print(f"  | {line}")
    banner("the third guest: Debian's PV GRUB, unmodified, on a pvxen vCPU")
    grub_guest(rundir, xl)
    banner("dom0 on the bridge")
    dom0_reaches_web(rundir, xl)
    banner("the domains and their devices, as xl shows them")
    run(xl, "list")
    run(xl, "block-list", "web", "client", *(["grub"] if domid_of(xl, "grub") else []))
    run(xl, "network-list", "web", "client")

    banner("the store, as xenstore-ls shows it")
    env_hint = f"XENSTORED_PATH={socket}"
    os.environ["XENSTORED_PATH"] = str(socket)
    run(tool("xenstore-ls"), "/local/domain")
    c_tool = shutil.which("xenstore-ls", path="/usr/bin")
    if c_tool:
        banner("the same through Debian's C xenstore-ls")
        run(c_tool, "/local/domain", check=False)

    banner("try it yourself")
    print(f"""  export PVXEN_RUNDIR={rundir} {env_hint}
  . .venv/bin/activate
  xl console web               # attach to web's console (detach with Ctrl-])
  xl console grub              # PV GRUB's prompt: try ls, cat (xen/xvda,msdos1)/hello.txt
  xl list                      # domains, Xen's columns
  xl block-list web            # the disk: state, event channel, ring-ref
  xl network-list client       # the vif, and whether it is on a real bridge
  ip link; bridge link         # vif<domid>.0 TAPs on xenbr0 (real bridge)
  tcpdump -ni xenbr0 icmp      # watch: xl create examples/client.cfg again
  xl create examples/hello.cfg # another guest
  xl shutdown hello            # through control/shutdown, as in Xen
  xenstore-ls -f               # the whole store
  xenstore-watch /local/domain # watch guests come and go
  pvxen status                 # the daemons
  make stop                    # pvxen down: stop everything
Logs: {rundir}/log/ (daemons), {rundir}/backendd/console/ (the guests' consoles),
{rundir}/xl/log/ (the guest processes' own output)""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
