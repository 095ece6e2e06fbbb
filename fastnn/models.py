"""Keras's ``keras.models`` spellings: ``Sequential``, ``load_model``, ``model_from_json``."""

from __future__ import annotations

import json

from .model import Sequential
from .saving import load_model

__all__ = ["Sequential", "load_model", "model_from_json"]


def model_from_json(json_string: str, backend: str | None = None) -> Sequential:
    """The model ``model.to_json()`` describes, with fresh weights."""
    if not isinstance(json_string, str):
        raise TypeError(f"json_string must be a str, got {type(json_string).__name__}")
    try:
        spec = json.loads(json_string)
    except json.JSONDecodeError as exc:
        raise ValueError(f"json_string is not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or spec.get("class_name") != "Sequential":
        raise ValueError("json_string must describe a Sequential model (model.to_json())")
    return Sequential.from_config(spec.get("config"), backend=backend)
