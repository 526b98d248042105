"""Output files checked before the work that writes them.

No torch (Pillow only when asked about picture formats): the command line calls it
before it imports torch. Writability is
tried, not read off permission bits, which say nothing for root, ``/proc`` or read-only
mounts; nothing is left behind and an existing file is not changed.
"""
from __future__ import annotations

import functools
import io
import os
import tempfile

__all__ = ["unwritable_reason", "pil_writes_rgb"]


def unwritable_reason(path: str) -> str | None:
    """Why no file can be written at ``path`` (a message fragment), or None when it can:
    an empty path, a folder, a parent folder that is missing or not a folder, or a place
    where creating (or, for an existing file, opening for writing) fails."""
    if not path:
        return "an empty path"
    if os.path.isdir(path):
        return f"is a folder: give a file name, e.g. {os.path.join(path, 'out.png')!r}"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"the folder {parent!r} {'is not a folder' if os.path.exists(parent) else 'does not exist'}"
    try:
        if os.path.exists(path):
            with open(path, "ab"):  # append mode: opened for writing, left as it is
                pass
        else:
            # a probe beside it rather than `path` itself: nothing is left if the work fails
            fd, probe = tempfile.mkstemp(dir=parent, prefix=".dvtp-write-check-")
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        return f"cannot write a file there ({err.strerror or err})"
    return None


@functools.lru_cache(maxsize=None)
def pil_writes_rgb(ext: str) -> bool:
    """Whether Pillow saves an RGB picture to a file ending in ``ext`` (".png"): many
    registered extensions are read-only (.psd), need a plugin (.h5) or another mode (.xbm),
    so only an actual save (of one pixel, into memory) tells."""
    from PIL import Image

    image_format = Image.registered_extensions().get(ext.lower())
    if image_format is None:
        return False
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    except Exception:  # noqa: BLE001 - whatever a plugin raises means "cannot write this"
        return False
    return True
