"""Run a program that receives SIGTERM when the process that started it dies, even by SIGKILL (Linux).

`attribution demo` starts its API and dashboard in sessions of their own, so a terminal's Ctrl-C reaches only the
demo, which then stops them in order. Outside its group, they would outlive a demo that cannot clean up (killed
with SIGKILL, or crashed); this wrapper asks the kernel for a parent-death signal, which survives exec, and then
becomes the program: `python -P .../orphan_guard.py PARENT_PID PROGRAM [ARG ...]`. It imports nothing of ours.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main(argv: Sequence[str]) -> None:
    """Ask for SIGTERM on the parent's death, give up if the parent is already gone, else exec the program."""
    parent, program = int(argv[0]), list(argv[1:])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        sys.exit(0)  # the parent died before the request took effect: nobody is left to stop the program
    os.execv(program[0], program)  # noqa: S606 - the demo's own argv, no shell to interpret it


if __name__ == "__main__":
    main(sys.argv[1:])
