"""Keras's ``keras.models`` spellings: ``Sequential``, ``load_model``, ``model_from_json``,
``clone_model``."""

from __future__ import annotations

import json

from . import saving
from .model import Sequential

__all__ = ["Sequential", "clone_model", "load_model", "model_from_json"]


def clone_model(model: Sequential, backend: str | None = None) -> Sequential:
    """A new model with ``model``'s architecture and newly initialised weights, not
    compiled (Keras's ``clone_model``); ``clone.set_weights(model.get_weights())`` copies
    the weights, ``copy.deepcopy(model)`` copies everything."""
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastnn Sequential, got {type(model).__name__}")
    return Sequential.from_config(model.get_config(), backend=backend or model.backend_name)


def model_from_json(json_string: str, backend: str | None = None) -> Sequential:
    """The model ``model.to_json()`` describes (fastnn's or Keras 3's), with fresh
    weights."""
    if not isinstance(json_string, str):
        raise TypeError(f"json_string must be a str, got {type(json_string).__name__}")
    try:
        spec = json.loads(json_string)
    except json.JSONDecodeError as exc:
        raise ValueError(f"json_string is not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or spec.get("class_name") != "Sequential":
        raise ValueError("json_string must describe a Sequential model (model.to_json())")
    if str(spec.get("module", "")).startswith("keras"):  # Keras's model.to_json()
        from .keras_file import _model_from_keras

        return _model_from_keras(spec, Sequential, backend)
    return Sequential.from_config(spec.get("config"), backend=backend)


def load_model(path, backend: str | None = None, compile: bool = True) -> Sequential:
    """Reads a model file: fastnn's own (``model.save("m.fnn")``: architecture, weights,
    ``metadata`` and, with ``compile``, optimizer state, loss, metrics and random state, so
    ``fit`` continues where it stopped) or Keras 3's ``.keras`` (architecture and weights).

    Raises
    ------
    ValueError
        If the file is damaged, of an unsupported version or a legacy ``.h5`` model, or holds
        a layer, option or array that does not match.
    """
    return saving.read_model(path, Sequential, backend=backend, compile=compile)
