"""Kernel backends: name -> module, loaded lazily.

Precedence: an explicit ``backend=`` argument > :func:`set_backend` > the ``FASTNN_BACKEND``
environment variable > the first importable of cython, numba, numpy.  ``cuda`` is opt-in.

cython comes first because it is compiled when the package is installed: a new process
trains at once, where numba first compiles (or loads from its disk cache) the whole
training path of the model it runs.  Once warm the two run at the same speed.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ._names import unknown_name_error

#: Backend name -> module implementing the kernel contract.
MODULES = {
    "numba": "fastnn.kernels.numba_cpu",
    "cython": "fastnn.kernels._cython",
    "numpy": "fastnn.kernels.reference",
    "cuda": "fastnn.kernels.cuda",
}
#: Backends tried, in order, when none is chosen.
AUTO_ORDER = ("cython", "numba", "numpy")

#: The SIMD builds of the cython kernels (setup.py), widest first, with the CPU features each
#: needs as NumPy's runtime detection names them (that detection includes the OS's support).
#: FASTNN_CYTHON_SIMD=avx2 or =baseline caps the choice.
CYTHON_SIMD = (
    ("avx512", ("AVX2", "AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL")),
    ("avx2", ("AVX2",)),
)

_loaded: dict[str, ModuleType] = {}
_errors: dict[str, str] = {}
_chosen: str | None = None


def load(name: str) -> ModuleType:
    """Imports backend ``name`` and returns its kernel module.

    Raises
    ------
    ValueError
        If ``name`` is not a backend.
    RuntimeError
        If the backend cannot be loaded here (the message says why).
    """
    if not isinstance(name, str):
        raise TypeError(
            f"backend must be a string name or None, got {type(name).__name__} {name!r}"
        )
    if name not in MODULES:
        raise unknown_name_error("backend", name, MODULES)
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        raise RuntimeError(f"backend {name!r} is not available: {_errors[name]}")
    try:
        module = _import(name)
        check = getattr(module, "check_available", None)
        if check is not None:
            check()
    except Exception as exc:  # noqa: BLE001 - any import failure makes it unavailable
        _errors[name] = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"backend {name!r} is not available: {_errors[name]}") from exc
    _loaded[name] = module
    return module


def _import(name: str) -> ModuleType:
    """The module of backend ``name``: for cython the widest SIMD build this CPU runs (a
    build that is missing or fails to import is skipped), else the baseline build."""
    if name != "cython":
        return importlib.import_module(MODULES[name])
    for simd in cython_simd_candidates():
        try:
            module = importlib.import_module(f"{MODULES[name]}_{simd}")
        except ImportError:
            continue
        break
    else:
        module = importlib.import_module(MODULES[name])
    stale = stale_build(module)
    if stale is not None:
        raise RuntimeError(stale)
    return module


def stale_build(module) -> str | None:
    """Why the compiled ``module`` is stale, or None: in an in-place (editable) build, the
    kernels' source beside it (``_cython.pyx`` and its ``_cy_*.pxi``) differs from the one
    it was built from (the digest setup.py wrote beside it; a rebuild that failed to
    translate leaves the previous build behind).  None where there is no source or no
    digest to compare (an installed wheel)."""
    from .kernels._digest import source_digest

    path = getattr(module, "__file__", None) or ""
    directory = os.path.dirname(path)
    source = os.path.join(directory, "_cython.pyx")
    digest_file = path + ".sha256"
    if not os.path.isfile(digest_file):
        return None
    current = source_digest(directory)
    if current is None:
        return None
    with open(digest_file, encoding="ascii") as f:
        built = f.read().strip()
    if built == current:
        return None
    return (
        f"{os.path.basename(path)} was built from another version of {source} (or of the "
        "_cy_*.pxi it includes); "
        "rebuild it: pip install -e . (the numba backend runs meanwhile)"
    )


def cython_simd_candidates() -> list[str]:
    """The SIMD builds of the cython kernels this CPU can run, widest first, capped by
    FASTNN_CYTHON_SIMD (``avx512``, ``avx2`` or ``baseline``; unset: no cap)."""
    cap = os.environ.get("FASTNN_CYTHON_SIMD", "").strip().lower()
    names = [simd for simd, _ in CYTHON_SIMD]
    if cap and cap not in (*names, "baseline"):
        raise ValueError(
            f"environment variable FASTNN_CYTHON_SIMD must be one of {', '.join(names)}, "
            f"baseline, got {cap!r}"
        )
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy's detection moved: the baseline build runs everywhere
        return []
    start = names.index(cap) if cap in names else (len(names) if cap == "baseline" else 0)
    return [
        simd
        for simd, needs in CYTHON_SIMD[start:]
        if all(features.get(feature, False) for feature in needs)
    ]


def cython_simd() -> str | None:
    """Which build of the cython kernels loads here (``avx512``, ``avx2``, ``baseline``), or
    None when the cython backend is unavailable."""
    if why_unavailable("cython") is not None:
        return None
    module = load("cython").__name__
    return module.rsplit("_", 1)[1] if module != MODULES["cython"] else "baseline"


def why_unavailable(name: str) -> str | None:
    """None if backend ``name`` loads, else the reason it does not."""
    try:
        load(name)
    except RuntimeError:
        return _errors[name]
    return None


def available() -> list[str]:
    """Names of the backends that load on this machine (cuda only if it loads)."""
    return [name for name in MODULES if why_unavailable(name) is None]


def set_backend(name: str | None) -> None:
    """Selects the default backend for new layers and models (None: automatic choice)."""
    global _chosen
    if name is not None:
        load(name)
    _chosen = name


def get_backend() -> str:
    """Name of the backend used when none is passed explicitly."""
    if _chosen is not None:
        return _chosen
    env = os.environ.get("FASTNN_BACKEND", "").strip()
    if env:
        try:
            load(env)
        except ValueError as exc:
            raise ValueError(f"environment variable FASTNN_BACKEND: {exc}") from None
        return env
    for name in AUTO_ORDER:
        if why_unavailable(name) is None:
            return name
    raise RuntimeError("no backend could be loaded")  # numpy always loads


def automatic() -> bool:
    """True when no backend was chosen (no set_backend, no FASTNN_BACKEND): the default is
    then the first of AUTO_ORDER that loads."""
    return _chosen is None and not os.environ.get("FASTNN_BACKEND", "").strip()


def runs_kinds(name: str, kinds) -> bool:
    """Whether backend ``name`` loads here and runs every layer kind in ``kinds``."""
    if why_unavailable(name) is not None:
        return False
    supported = getattr(load(name), "KINDS", None)
    return supported is None or all(k in supported for k in kinds)


def resolve(backend: str | None = None) -> tuple[str, ModuleType]:
    """(name, module) of ``backend`` or of the current default."""
    name = backend if backend is not None else get_backend()
    return name, load(name)
