"""``make run``: bring the stack up, boot the demo guests, show what to look at.

Runs the same commands a user types: ``pvxen up`` (hypervisord, then
xenstored, each waited for until ready), ``xl create`` for each demo
guest, ``xl list``, and ``xenstore-ls``. The daemons stay up afterwards so
the tools can be tried by hand; ``make stop`` (``pvxen down``) ends them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from libxen.paths import default_runtime_dir

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GUESTS = [REPO / "examples" / "hello.cfg", REPO / "examples" / "counter.cfg"]


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    print("$ " + " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv)),
          flush=True)
    proc = subprocess.run(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(proc.stdout, end="", flush=True)
    if check and proc.returncode != 0:
        sys.exit(f"demo: {Path(argv[0]).name} failed with exit code {proc.returncode}")
    return proc


def main() -> int:
    rundir = default_runtime_dir()
    os.environ["PVXEN_RUNDIR"] = str(rundir)
    socket = rundir / "xenstored" / "socket"

    banner(f"starting the daemons (runtime directory {rundir})")
    run(tool("pvxen"), "up")

    xl = BIN / "xl"
    if xl.exists():
        banner("booting the demo guests")
        for cfg in GUESTS:
            name = cfg.stem
            if subprocess.run([str(xl), "domid", name], capture_output=True).returncode == 0:
                print(f"{name}: already running")
                continue
            run(str(xl), "create", str(cfg))
        time.sleep(1.0)  # let the guests write their first keys
        banner("the domains, as xl shows them")
        run(str(xl), "list")
        banner("what the guests printed (their stdout, kept by xl's launcher)")
        for cfg in GUESTS:
            log = rundir / "xl" / "log" / f"guest-{cfg.stem}.log"
            if log.exists():
                for line in log.read_text(errors="replace").splitlines()[-2:]:
                    print(f"  {cfg.stem}: {line}")

    banner("the store, as xenstore-ls shows it")
    env_hint = f"XENSTORED_PATH={socket}"
    os.environ["XENSTORED_PATH"] = str(socket)
    run(tool("xenstore-ls"), "-f", "-p")
    c_tool = shutil.which("xenstore-ls", path="/usr/bin")
    if c_tool:
        banner("the same through Debian's C xenstore-ls")
        run(c_tool, "/local/domain", check=False)

    banner("try it yourself")
    print(f"""  export PVXEN_RUNDIR={rundir} {env_hint}
  . .venv/bin/activate
  xl list                      # domains, Xen's columns
  xl create examples/hello.cfg # another guest
  xl shutdown hello            # through control/shutdown, as in Xen
  xenstore-ls -f               # the whole store
  xenstore-watch /local/domain # watch guests come and go
  pvxen status                 # the daemons
  make stop                    # pvxen down: stop everything
Logs: {rundir}/log/ (daemons), {rundir}/xl/log/ (guests)""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
