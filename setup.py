"""Build steps pyproject.toml cannot express: the Cython kernels extension.

``kernels/`` is installed as ``fastnn.kernels`` (see pyproject.toml).  The extension is
optional: if it fails to build, the package still installs and ``fastnn info`` says why the
cython backend is unavailable.  Set FASTNN_NO_OPENMP=1 to build it without OpenMP.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


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
        print(f"WARNING: fastnn's Cython extension was not built ({exc}); "
              "the numba and numpy backends still work.", file=sys.stderr)


def _extensions():
    if not os.path.exists(os.path.join("kernels", "_cython.pyx")):
        return []
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        print(f"WARNING: Cython build skipped ({exc})", file=sys.stderr)
        return []
    from setuptools import Extension

    openmp = os.environ.get("FASTNN_NO_OPENMP", "") in ("", "0")
    flags = ["-O3", "-fno-math-errno"] + (["-fopenmp"] if openmp else [])
    ext = Extension(
        "fastnn.kernels._cython",
        ["kernels/_cython.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"] if openmp else [],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    return cythonize([ext], language_level=3, compile_time_env={"OPENMP": openmp})


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
