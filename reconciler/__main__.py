"""Entry point for ``python -m reconciler`` and the ``reconciler`` console script; hands over to the CLI.

Before anything heavy is imported, ``signals.hold`` catches SIGTERM/SIGINT: a
daemon stopped while Python still imports exits 0, not 143 (``signals``).

A one-shot command (anything but ``run``) runs without the cyclic garbage
collector: what it builds (parsed documents, desired and live state) is
acyclic and lives until the end, and the collector, triggered every 700
allocations, would walk the growing heap again and again (a fifth of a cold
``validate`` at 10,000 resources).  And it leaves without tearing its heap
down: once the command has returned (its records written, its output
flushed), freeing every document one by one and a last collection only delay
the exit.  With other threads still running (none should be), or under coverage
(whose data is written at exit: CI measures the CLI processes the tests
start), Python's ordinary exit runs instead.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
from typing import NoReturn

from reconciler import failpoints, signals


def run() -> NoReturn:
    signals.hold()
    failpoints.hit("startup")  # tests hold the process here, before the imports, to stop it deterministically
    if sys.argv[1:2] != ["run"]:
        gc.disable()
    from reconciler.cli import main

    code = main()
    if threading.active_count() > 1 or "coverage" in sys.modules:  # measured (CI): coverage saves at exit
        raise SystemExit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more can be said on it
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
