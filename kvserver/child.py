"""Run ``kvserver`` as a child of ``raftCoreRun`` that dies with its parent.

    python -m kvserver.child PARENT_PID [kvserver arguments...]

Asks Linux to send this process SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), then runs ``kvserver.main`` in this same
process, so there is no second interpreter start. SIGTERM, not SIGKILL, so
that a node stops as it does on any graceful stop: a leader hands over its
leadership first and the WAL is closed. The setting survives nothing that
happens here (no exec of a set-user-ID program), and it is armed before
the node opens its port.

The race: the parent may die between our fork and the ``prctl`` call; the
kernel then never sends the signal. So after arming it we compare
``getppid()`` with the pid the parent passed: if we were reparented
already, we exit at once (status 1, one line on stderr).

On other systems the guard is not available; the node runs unguarded
(``raftCoreRun`` still stops its nodes on SIGTERM and Ctrl-C).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

from rpc.cli import EXIT_FAILED, EXIT_USAGE, fail

__all__ = ["main", "set_parent_death_signal"]

PROG = "kvserver"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent (the
    thread that forked it) exits. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or not args[0].isdigit():
        fail(PROG, "usage: python -m kvserver.child PARENT_PID [kvserver args]", EXIT_USAGE)
    parent = int(args[0])
    if set_parent_death_signal(signal.SIGTERM) and os.getppid() != parent:
        fail(PROG, f"parent process {parent} is gone; not starting", EXIT_FAILED)
    from kvserver.main import main as kvserver_main

    return kvserver_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
