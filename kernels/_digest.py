"""The digest of the Cython kernels' source: ``_cython.pyx`` and the ``_cy_*.pxi`` files it
includes.  setup.py writes it beside every extension it builds (loading this file by path,
not through the package); ``fastnn.backend.stale_build`` compares it with the source beside
an in-place build.  Kept free of imports beyond the standard library for that reason."""

from __future__ import annotations

import glob
import hashlib
import os


def source_digest(directory: str) -> str | None:
    """SHA-256 of ``directory``'s ``_cython.pyx`` followed by its ``_cy_*.pxi`` files in
    name order, or None without a ``_cython.pyx``."""
    pyx = os.path.join(directory, "_cython.pyx")
    if not os.path.isfile(pyx):
        return None
    digest = hashlib.sha256()
    for path in [pyx, *sorted(glob.glob(os.path.join(directory, "_cy_*.pxi")))]:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()
