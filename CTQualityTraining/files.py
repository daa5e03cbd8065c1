"""Output files of the training commands: checked before any work, then written whole or not at all."""

from __future__ import annotations

import os
from contextlib import contextmanager, suppress
from pathlib import Path

from ctqa.errors import InputError
from ctqa.outputs import check_output_folder


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """The file to write, checked before any work: named, not a folder, in a folder that can be created and written
    (``ctqa.outputs.check_output_folder``). Nothing is created; InputError (one line) names the path."""
    if not str(path).strip():
        raise InputError(f"{option} is an empty string; name the file to write")
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target}: {option} is a folder; name the file to write")
    check_output_folder(target.parent)
    return target


@contextmanager
def written_whole(path: str | os.PathLike):
    """Yield a temporary path beside path (same name after a prefix, so writers that go by the extension work) and,
    when the block succeeds, move it onto path with os.replace: path is then whole or, after an error or Ctrl-C,
    as it was. The folder is created when missing; InputError naming path when it cannot be written."""
    target = Path(path)
    temporary = target.with_name(f".partial-{os.getpid()}-{target.name}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, target)
    except OSError as error:
        raise InputError(f"{target}: cannot write ({error.strerror or error})") from None
    finally:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
