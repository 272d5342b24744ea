"""A reader that stops reading ends the command quietly: ``baetyl certs list | head -1``.

Python turns SIGPIPE into ``BrokenPipeError`` at the next write or at the final flush, which
printed a traceback after ``head`` had what it wanted. Here the command ends as a program
killed by SIGPIPE is reported by a shell (141), with nothing on stderr; a ``BrokenPipeError``
from anything but stdout is a real error and goes on.
"""

from __future__ import annotations

import functools
import os
import select
import sys
from collections.abc import Callable
from typing import ParamSpec

__all__ = ["EXIT_READER_GONE", "quiet_when_reader_leaves"]

EXIT_READER_GONE = 128 + 13  # 128 + SIGPIPE

P = ParamSpec("P")


def quiet_when_reader_leaves(main: Callable[P, int]) -> Callable[P, int]:
    """``main``, ending with :data:`EXIT_READER_GONE` and no traceback once stdout's reader left."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()  # here, not at exit, where the error could only be printed
        except BrokenPipeError:
            if not _stdout_reader_gone():
                raise
            # The interpreter flushes stdout once more at exit: send that to /dev/null
            # (the recipe of Python's signal documentation, "Note on SIGPIPE").
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_READER_GONE
        return code

    return run


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is closed."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
