"""The ``weightidx`` command: thin modules over the library, one a command group (``index``,
``compare``, ``sql``, ``search``, ``report``, ``demo``, ``lora``). Each parses its arguments,
calls one library function and renders the result; ``cli.common.user_errors`` is the one
place where library exceptions become ``Error: ...`` lines and exit codes (``WEIGHTIDX_DEBUG=1``
shows the traceback instead).
"""

from __future__ import annotations

import signal

from weightidx.cli import compare, demo, index, lora, report, search, sql  # noqa: F401 (they register)
from weightidx.cli.app import app
from weightidx.cli.common import on_sigterm

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, on_sigterm)
    app()
