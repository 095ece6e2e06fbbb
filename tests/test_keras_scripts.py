"""Keras 3 scripts (``tests/keras_scripts/``), written against Keras, run unchanged with
``import fastnn as keras`` and reach Keras's test accuracy within 1.5 points.

Keras's accuracy for each script was measured by running the same file with the import
line replaced by ``import keras`` (Keras 3.15.1 on its PyTorch backend, torch 2.13.0 CPU);
Keras on the CPU takes minutes per script, so that run is repeated only when
``FASTNN_KERAS_SCRIPTS=1`` is set (it then checks the recorded figure too).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "keras_scripts"
#: Keras's test accuracy on each script (measured as the module docstring says).
KERAS_ACCURACY = {
    "convnet.py": 0.9689,
    "lstm_rows.py": 0.9556,
    "mlp_batchnorm.py": 0.9778,
}
IMPORT_LINE = "import fastnn as keras"


def _run(source: str, env=None) -> float:
    out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                         env=env, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return float(re.search(r"test accuracy ([0-9.]+)", out.stdout).group(1))


@pytest.mark.parametrize("script", sorted(KERAS_ACCURACY))
def test_keras_script_runs_unchanged_on_fastnn(script):
    source = (SCRIPTS / script).read_text()
    assert source.count(IMPORT_LINE) == 1
    accuracy = _run(source)
    assert accuracy >= KERAS_ACCURACY[script] - 0.015


@pytest.mark.skipif(
    os.environ.get("FASTNN_KERAS_SCRIPTS") != "1", reason="Keras on the CPU takes minutes"
)
@pytest.mark.parametrize("script", sorted(KERAS_ACCURACY))
def test_recorded_keras_accuracy(script):
    pytest.importorskip("keras")
    source = (SCRIPTS / script).read_text().replace(IMPORT_LINE, "import keras")
    env = dict(os.environ, KERAS_BACKEND="torch")
    assert abs(_run(source, env) - KERAS_ACCURACY[script]) <= 0.01
