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
