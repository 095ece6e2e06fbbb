"""Without numba-cuda (or any CUDA library) the package imports, the CPU backends train and
``fastnn info`` says why the cuda backend is unavailable."""

import subprocess
import sys

_SCRIPT = r"""
import sys

class _NoCuda:
    # an import hook standing in for a machine where numba-cuda is not installed
    def find_spec(self, name, path=None, target=None):
        if name in ("numba.cuda", "numba_cuda") or name.startswith(("numba.cuda.", "numba_cuda.")):
            raise ImportError(f"No module named {name!r} (numba-cuda is not installed)")
        return None

sys.meta_path.insert(0, _NoCuda())

import numpy as np
import fastnn
from fastnn import backend, cli
from fastnn.layers import Dense

why = backend.why_unavailable("cuda")
assert why is not None, "cuda must be unavailable without numba-cuda"
assert "cuda" not in backend.available()
cli.main(["info"])
x = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
model = fastnn.Sequential([Dense(4, activation="relu", input_dim=5), Dense(1)], seed=0)
model.compile("adam", "mse")
model.fit(x, x[:, :1], epochs=2, verbose=0)
print("trained on", model.backend_name)
"""


def test_package_works_and_info_explains_without_numba_cuda():
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    info = [line for line in out.stdout.splitlines() if line.strip().startswith("cuda")]
    assert info and "unavailable" in info[0] and len(info[0].split("unavailable:", 1)[1]) > 5
    assert "trained on" in out.stdout
