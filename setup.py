"""Build steps pyproject.toml cannot express: the Cython kernels extension.

``kernels/`` is installed as ``fastnn.kernels`` (see pyproject.toml), so the extension is
named ``fastnn.kernels._cython``; an editable install (``pip install -e .``) builds it in
place, next to its source, as ``kernels/_cython.<abi>.so``.

The extension is optional: if Cython cannot translate it or the C compiler fails, the
package still installs and ``fastnn info`` (``fastnn.backend.why_unavailable("cython")``)
says why the cython backend is unavailable.  Set FASTNN_NO_OPENMP=1 to build it without
OpenMP (the kernels never call omp_* functions, so both builds import).
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

PYX = os.path.join("kernels", "_cython.pyx")


class OptionalBuildExt(build_ext):
    """Builds extensions but never fails the install because of them."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(
            f"WARNING: fastnn's Cython extension was not built ({exc}); "
            "the numba and numpy backends still work.",
            file=sys.stderr,
        )


def _openmp():
    return os.environ.get("FASTNN_NO_OPENMP", "").strip() in ("", "0")


def _extensions():
    if not os.path.exists(PYX):
        return []
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        print(f"WARNING: Cython build skipped ({exc})", file=sys.stderr)
        return []
    from setuptools import Extension

    openmp = _openmp()
    # -fno-math-errno: sqrt() may become one instruction, so the optimizer loops vectorise;
    # -fno-trapping-math: loops with float compares (clamps, selects) are if-converted and
    # vectorised (results stay IEEE; no kernel runs with FP traps enabled);
    # -g0 overrides Python's -g: a quarter of the compile time and 3/4 of the .so's size
    flags = ["-O3", "-g0", "-fno-math-errno", "-fno-trapping-math"]
    flags += ["-fopenmp"] if openmp else []
    ext = Extension(
        "fastnn.kernels._cython",
        [PYX],
        include_dirs=[numpy.get_include()],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"] if openmp else [],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    try:
        return cythonize([ext], language_level=3, compile_time_env={"OPENMP": openmp}, quiet=True)
    except Exception as exc:  # noqa: BLE001 - a Cython compile error must not block install
        print(
            f"WARNING: fastnn's Cython extension was not translated ({exc}); "
            "the numba and numpy backends still work.",
            file=sys.stderr,
        )
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
