"""Small files written whole: aside, then renamed into place, so a reader sees the old
content or the new, never half of it (the cadence word, the page, the Vega bundle)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomic(path: Path, content: str) -> None:
    """Write ``content`` (UTF-8) to ``path`` through a uniquely named file beside it and one rename:
    writers racing each other each rename a whole file; the last rename wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
