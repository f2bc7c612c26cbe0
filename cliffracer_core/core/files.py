"""Files that several processes may create at once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_once(path: Path, content: str) -> None:
    """Create ``path`` (mode 0600) atomically; when several processes race, the first wins.

    The content goes to a temporary file that is then linked into place, so nobody ever reads
    a partial file and a later writer never replaces the first one's.
    """
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
        handle.write(content)
    os.chmod(handle.name, 0o600)
    try:
        os.link(handle.name, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(handle.name)


def replace_atomically(path: Path, content: str, *, mode: int = 0o644) -> None:
    """Write ``path`` so that a reader sees the old content or the new, never a partial file.

    The content goes to a temporary file in the same directory that is then renamed over
    ``path``; a rename within one file system is atomic. Its name starts with a dot and ends
    in ``.tmp``, so a watcher of ``*.json`` (Prometheus's file discovery) never reads it.
    """
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.chmod(handle.name, mode)
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise
