"""Command-line tools in a pipe: `python -m dist_llm.generate ... | head -3` ends quietly with exit 0.

When the reader of stdout goes away, Python gets EPIPE on the next write (it ignores SIGPIPE) and raises
BrokenPipeError. A command-line tool should just stop then, as `yes | head` does. Python flushes stdout
once more at exit and would report the error again, so stdout is first pointed at /dev/null.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def exit_code_in_a_pipe(main: Callable[[], int]) -> int:
    """main()'s exit code, or 0 once the reader of stdout has gone."""
    try:
        return main()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
