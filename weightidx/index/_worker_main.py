"""Entry point of an index worker process (see ``_worker.py``); not imported by the package."""

import os
import signal
import sys

from weightidx.index.blas import set_blas_threads
from weightidx.index.workers import serve

# The parent handles Ctrl-C and closes our stdin; one BLAS thread because the
# parallelism is the number of worker processes.
signal.signal(signal.SIGINT, signal.SIG_IGN)
set_blas_threads(1)
serve(sys.stdin.buffer, sys.stdout.buffer)
# Every result is flushed and nothing else needs tearing down: skipping the interpreter's
# shutdown (20 ms, mostly numpy's) lets the parent finish that much sooner.
os._exit(0)
