"""The one exception type that means "the user's input is unusable", and how command lines report it."""

import signal
import sys
import threading
from typing import Callable


class InputError(ValueError):
    """Bad input: the message is one line naming the file and the reason.

    The CLI turns it into exit code 2 with the message on stderr; the Slicer module shows it in a dialog.
    """


def exit_status(program: str, command: Callable[[], int | None]) -> int:
    """Run a command-line action: its status (0 when it returns None), 2 with `program: error: reason` on stderr for
    InputError.

    Ctrl-C and SIGTERM unwind the action (so partial outputs are cleaned up) and give 130 / 143 with one line.
    """

    def terminated(signum, frame):
        raise Terminated()

    previous = (
        signal.signal(signal.SIGTERM, terminated) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        status = command()
    except InputError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{program}: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return status or 0


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt so that context managers clean up."""


def first_line(error: Exception) -> str:
    """A one-line reason from an exception whose text may span many lines (SimpleITK's do)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:  # ITK puts the useful part after "Description:" or as the last line
        if line.startswith("Description:"):
            return line.removeprefix("Description:").strip()
    return lines[-1] if lines else type(error).__name__
