"""The threading policy: fastnn starts no thread pool of its own (only the BLAS's)."""

import subprocess
import sys

import pytest

import fastnn

CPU_BACKENDS = [b for b in fastnn.backend.available() if b not in ("cuda", "numpy")]

_SCRIPT = """
import numpy as np, numba, fastnn
from fastnn.layers import Dense, Dropout
rng = np.random.default_rng(0)
x = rng.normal(size=(300, 20)).astype(np.float32)
y = rng.integers(0, 3, 300)
model = fastnn.Sequential([Dense(16, activation="relu", input_dim=20), Dropout(0.2),
                           Dense(3, activation="softmax")], seed=0, backend="{backend}")
model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
model.fit(x, y, epochs=2, batch_size=32, verbose=0)
model.predict(x)
try:
    layer = numba.threading_layer()
except ValueError:
    layer = None
print("threading layer:", layer)
"""


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_training_starts_no_numba_thread_pool(backend):
    """No parallel region runs during fit/predict: Numba's threading layer stays
    uninitialised, so no OpenMP/TBB workers can spin against OpenBLAS's threads."""
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(backend=backend)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "threading layer: None" in out.stdout, out.stdout
