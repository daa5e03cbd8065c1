"""Output files of the training commands: checked before any work, then written whole or not at all
(ctqa.outputs.written_whole, shared with the core)."""

from __future__ import annotations

import os
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
