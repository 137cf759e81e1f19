"""A Python child process spoken to in pickles over its stdin and stdout, for work kept off the training
process's GIL: the send helper here, and the training job's provisional-score helper (``tracking.monitor``).

The child runs ``module.function()`` from this checkout's packages, exits when its stdin closes (its parent
closed it, or ended in any way), ignores Ctrl-C (that is for the parent, which ends it), and writes its
answers to a copy of its stdout while fd 1 points at /dev/null, so a stray print of a library cannot
corrupt them. Its stderr is discarded: what goes wrong comes back in the answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds notify/, scoring/ and tracking/


def start(module: str, function: str, nice: int = 10) -> subprocess.Popen:
    """The child running ``module.function()``, its priority lowered before it imports anything (the imports
    are most of its CPU: the training process comes first for it); raises OSError when it cannot be started.

    Lowered twice, where the system allows it: by ``nice`` (its share of a busy core), and to the SCHED_BATCH
    policy (Linux), so that waking up it never preempts a running training thread; it waits for the scheduler's
    next tick or a free core instead. With only the nice value, a helper waking to score or send took 1-3 ms
    from the step that was running in about a third of the runs on a 2-core machine (bench/RESULTS.md B4). SCHED_BATCH
    keeps the nice share, so a busy machine still delivers (unlike SCHED_IDLE, which can starve)."""
    if not sys.executable:
        raise OSError("no Python executable (sys.executable is empty)")
    code = (f"import os, sys\ntry: os.nice({int(nice)})\nexcept (AttributeError, OSError): pass\n"
            "try: os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))\n"
            "except (AttributeError, OSError): pass\n"
            f"sys.path.insert(0, sys.argv[1]); from {module} import {function}; {function}()")
    return subprocess.Popen([sys.executable, "-c", code, ROOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen, wait: float, kill: bool) -> None:
    """Close its stdin (it exits once done with what it has) and wait up to ``wait`` seconds; then kill it
    (``kill``) or leave it to finish on its own."""
    try:
        process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        if kill:
            process.kill()
            process.wait()


def serve_pipes() -> tuple[BinaryIO, BinaryIO]:
    """In the child: (requests, answers) streams, set up as the module docstring says."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    return sys.stdin.buffer, answers
