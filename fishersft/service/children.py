"""Child processes that end with their parent: the private Redis and the workers of `fishersft serve` and
`fishersft demo`. On Linux each child asks the kernel for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG),
so a parent killed with SIGKILL, which runs no cleanup, leaves nothing running behind it."""

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1


def _end_with(parent: int) -> Callable[[], None] | None:
    """The child-side setup, run between fork and exec: nothing there but one libc call and a check (it runs
    while other threads of the parent may hold locks, so it takes none)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)  # loaded before the fork, not in the child
    prctl = libc.prctl

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return setup


def start_child(args: Sequence[str], **popen: Any) -> subprocess.Popen:
    """`subprocess.Popen(args, **popen)` for a child that gets SIGTERM when this process dies, however it dies.
    The signal follows the thread that started the child: start children from threads that live as long as they
    should (the main thread, or a supervisor that stops them when it ends)."""
    return subprocess.Popen(list(args), preexec_fn=_end_with(os.getpid()), **popen)
