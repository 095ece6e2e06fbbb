"""Keras 3's ``.keras`` files, both ways: a zip of ``config.json`` (the architecture as
Keras serialises it), ``metadata.json`` and ``model.weights.h5`` (HDF5, one group per layer
at Keras's path ``layers/<class in snake case>[_k]/vars/<i>``; recurrent layers keep theirs
under ``cell/``).  Only arrays and JSON are read: nothing is unpickled or executed.

Keras options that fastnn does not implement are refused when they differ from Keras's
default (a ValueError naming the layer and the option), never silently dropped.
"""

from __future__ import annotations

import datetime
import inspect
import io
import json
import os
import zipfile
import zlib

import numpy as np

from . import initializers
from .layers import LAYER_CLASSES, Input
from .layers.base import snake_case

#: Layers whose weights Keras keeps in a ``cell`` sub-object.
_CELL_LAYERS = frozenset({"SimpleRNN", "LSTM", "GRU"})
#: Keras options fastnn runs only at these values (Keras's defaults).
_FIXED_OPTIONS = {
    "data_format": ("channels_last",),
    "dilation_rate": (1, [1, 1], (1, 1)),
    "groups": (1,),
    "activity_regularizer": (None,),
    "kernel_regularizer": (None,),
    "bias_regularizer": (None,),
    "recurrent_regularizer": (None,),
    "embeddings_regularizer": (None,),
    "beta_regularizer": (None,),
    "gamma_regularizer": (None,),
    "kernel_constraint": (None,),
    "bias_constraint": (None,),
    "recurrent_constraint": (None,),
    "embeddings_constraint": (None,),
    "beta_constraint": (None,),
    "gamma_constraint": (None,),
    "return_state": (False,),
    "go_backwards": (False,),
    "stateful": (False,),
    "dropout": (0.0, 0),
    "recurrent_dropout": (0.0, 0),
    "mask_zero": (False,),
    "synchronized": (False,),
    "renorm": (False,),
    "noise_shape": (None,),
    "quantization_config": (None,),
    "sparse": (False,),
    "ragged": (False,),
    "invert": (False,),
    "max_value": (None,),
    "threshold": (0.0, 0),
    "use_bias": (True,),
    "keepdims": (False,),
}
#: Keras options with no effect on what a saved model computes.
_IGNORED_OPTIONS = frozenset(
    {"dtype", "seed", "unroll", "zero_output_for_mask", "renorm_momentum", "renorm_clipping",
     "trainable", "name", "optional", "input_length", "lora_rank", "lora_alpha"}
)  # fmt: skip
#: fastnn options that Keras's layers do not take.
_FASTNN_ONLY = frozenset({"input_dim", "input_shape", "alpha", "input_length"})
_INITIALIZER_NAMES = {
    "GlorotUniform": "glorot_uniform",
    "GlorotNormal": "glorot_normal",
    "HeUniform": "he_uniform",
    "HeNormal": "he_normal",
    "LecunUniform": "lecun_uniform",
    "LecunNormal": "lecun_normal",
    "Zeros": "zeros",
    "Ones": "ones",
    "RandomUniform": "uniform",
    "RandomNormal": "normal",
    "Orthogonal": "orthogonal",
}


def keras_paths(layers) -> list[str]:
    """Keras's path of each layer in ``model.weights.h5``: its class in snake case,
    numbered when it repeats (``dense``, ``dense_1``), whatever the layers are named."""
    seen: dict[str, int] = {}
    paths = []
    for layer in layers:
        base = snake_case(type(layer).__name__)
        count = seen.get(base, 0)
        seen[base] = count + 1
        paths.append(base if count == 0 else f"{base}_{count}")
    return paths


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError(
            ".keras files need h5py (the format's weights are HDF5): pip install h5py"
        ) from None
    return h5py


# ---------------------------------------------------------------------------------------
# fastnn -> Keras


def _keras_regularizer(value):
    if value is None:
        return None
    return {"module": "keras.regularizers", "class_name": "L1L2", "config": dict(value)}


def _keras_layer_config(layer, dtype: str) -> dict:
    fastnn_only = _FASTNN_ONLY - ({"input_dim"} if type(layer).__name__ == "Embedding" else set())
    # a callable initializer (which a config only names) becomes zeros: the weights follow
    config = initializers.without_callables(layer.get_config())
    config = {k: v for k, v in config.items() if k not in fastnn_only}
    alpha = layer.get_config().get("alpha", 0.2)
    if layer.get_config().get("activation") == "leaky_relu" and alpha != 0.2:
        raise ValueError(
            f"layer {layer.name!r}: activation='leaky_relu' with alpha={alpha} has no "
            "Keras spelling (Keras's leaky_relu activation has slope 0.2); use a LeakyReLU layer"
        )
    for key, value in config.items():
        if key.endswith("_regularizer"):
            config[key] = _keras_regularizer(value)
    if type(layer).__name__ == "Normalization":
        config.update(axis=[config["axis"]], mean=None, variance=None, invert=False)
    config.update(trainable=bool(layer.trainable), dtype=dtype)
    entry = {"module": "keras.layers", "class_name": type(layer).__name__, "config": config}
    entry["registered_name"] = None
    if layer.input_shape is not None:
        entry["build_config"] = {"input_shape": [None, *layer.input_shape]}
    return entry


def _keras_config(model) -> dict:
    dtype = np.dtype(model.dtype).name
    first = model._input
    input_dtype = first.dtype if first is not None and first.dtype else dtype
    inputs = {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {
            "batch_shape": [None, *model.layers[0].input_shape],
            "dtype": input_dtype,
            "name": first.name if first is not None else "input_layer",
        },
        "registered_name": None,
    }
    layers = [inputs] + [_keras_layer_config(layer, dtype) for layer in model.layers]
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": model.name, "trainable": True, "dtype": dtype, "layers": layers},
        "registered_name": None,
        "build_config": {"input_shape": [None, *model.layers[0].input_shape]},
    }


def _keras_weights(layer) -> list[np.ndarray]:
    weights = layer.get_weights()
    if type(layer).__name__ == "Normalization":
        weights = [*weights, np.array(0, dtype=np.int64)]  # Keras's adapt count
    return weights


def _weights_h5(model) -> bytes:
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_group("vars")
        for path, layer in zip(keras_paths(model.layers), model.layers):
            group = h5.create_group(f"layers/{path}")
            if type(layer).__name__ in _CELL_LAYERS:
                group = group.create_group("cell")
            vars_group = group.create_group("vars")
            for i, array in enumerate(_keras_weights(layer)):
                vars_group.create_dataset(str(i), data=array)
    return buffer.getvalue()


def save_weights_h5(model, path) -> None:
    """Writes the weights alone as Keras 3's ``.weights.h5`` (``model.load_weights`` in
    Keras reads it into a model of the same structure)."""
    if not model._maybe_build():
        raise RuntimeError("the model is not built yet: there are no weights to save")
    with open(os.fspath(path), "wb") as f:
        f.write(_weights_h5(model))


def load_weights_h5(model, path) -> None:
    """Reads a Keras 3 ``.weights.h5`` file into ``model`` (same structure)."""
    h5py = _h5py()
    if not model._maybe_build():
        raise RuntimeError("the model is not built yet: give input_dim or call build()")
    try:
        h5 = h5py.File(os.fspath(path), "r")
    except OSError as exc:
        if not os.path.exists(os.fspath(path)):
            raise FileNotFoundError(os.fspath(path)) from None
        raise ValueError(f"{os.fspath(path)!r} is not an HDF5 weights file: {exc}") from None
    with h5:
        model.set_weights(_read_weights(h5, model))


def save_keras(model, path) -> None:
    """Writes ``model`` as a Keras 3 ``.keras`` file (architecture and weights; no optimizer
    state) that ``keras.saving.load_model`` opens.

    Raises
    ------
    ValueError
        If a layer uses an option Keras cannot express.
    RuntimeError
        If the model is not built.
    """
    from ._version import __version__

    if not model._maybe_build():
        raise RuntimeError("the model is not built yet: there are no weights to save")
    config = json.dumps(_keras_config(model), allow_nan=False)
    saved = datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")
    metadata = json.dumps({"keras_version": "3.0.0", "date_saved": saved,
                           "written_by": f"fastnn {__version__}"})  # fmt: skip
    weights = _weights_h5(model)
    with zipfile.ZipFile(os.fspath(path), "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", metadata)
        zf.writestr("config.json", config)
        zf.writestr("model.weights.h5", weights)


# ---------------------------------------------------------------------------------------
# Keras -> fastnn


def _fastnn_initializer(value):
    if isinstance(value, dict):
        return _INITIALIZER_NAMES.get(value.get("class_name"))
    return value


def _fastnn_regularizer(value, where):
    if value is None or not isinstance(value, dict):
        return value
    cfg, name = value.get("config", {}), value.get("class_name")
    if name in ("L1", "L2", "L1L2"):
        return {"l1": float(cfg.get("l1", 0.0)), "l2": float(cfg.get("l2", 0.0))}
    raise ValueError(f"{where}: regularizer {name!r} is not supported by fastnn")


def _check_fixed(key, value, where):
    allowed = _FIXED_OPTIONS[key]
    if isinstance(value, list) and key == "dilation_rate":
        value = [int(v) for v in value]
    if value not in allowed:
        raise ValueError(
            f"{where}: option {key}={value!r} is not supported by fastnn (it runs {key}="
            f"{allowed[0]!r} only)"
        )


def _fastnn_kwargs(cls, config: dict, where: str) -> dict:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {}
    for key, value in config.items():
        if key in accepted and key not in ("trainable", "dtype", "seed"):
            if key.endswith("_initializer"):
                value = _fastnn_initializer(value)
                if value is None:
                    continue
            elif key.endswith("_regularizer"):
                value = _fastnn_regularizer(value, where)
            kwargs[key] = value
        elif key in _FIXED_OPTIONS:
            _check_fixed(key, value, where)
        elif key not in _IGNORED_OPTIONS:
            raise ValueError(f"{where}: Keras option {key!r} is not supported by fastnn")
    return kwargs


def _fastnn_layer(entry: dict, index: int):
    class_name = entry.get("class_name")
    config = dict(entry.get("config", {}))
    where = f"layer {index} ({class_name} {config.get('name')!r})"
    if class_name not in LAYER_CLASSES:
        raise ValueError(
            f"{where}: fastnn has no layer {class_name!r}; it has {sorted(LAYER_CLASSES)}"
        )
    if class_name == "Normalization":
        axis = config.get("axis", -1)
        config["axis"] = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if config.pop("mean", None) is not None or config.pop("variance", None) is not None:
            raise ValueError(f"{where}: a Normalization with a fixed mean/variance in its "
                             "config is not supported; adapt() it instead")  # fmt: skip
    cls = LAYER_CLASSES[class_name]
    layer = cls(**_fastnn_kwargs(cls, config, where))
    layer.trainable = bool(config.get("trainable", True))
    return layer


def _model_from_keras(config: dict, model_class, backend):
    if config.get("class_name") != "Sequential":
        raise ValueError(
            f"only Sequential models load in fastnn, got a {config.get('class_name')!r}"
        )
    inner = config.get("config", {})
    entries = list(inner.get("layers", []))
    layers = []
    if entries and entries[0].get("class_name") == "InputLayer":
        first = entries.pop(0)["config"]
        shape = first.get("batch_shape") or [None, *first.get("shape", [])]
        dtype = first.get("dtype")
        dtype = dtype if isinstance(dtype, str) and np.dtype(dtype).kind in "iu" else None
        layers.append(Input(tuple(shape[1:]), dtype=dtype, name=first.get("name")))
    layers += [_fastnn_layer(entry, i) for i, entry in enumerate(entries)]
    dtype = inner.get("dtype")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name")
    dtype = dtype if dtype in ("float32", "float64") else "float32"
    return model_class(layers, name=inner.get("name"), dtype=dtype, backend=backend)


def _read_weights(h5, model) -> list[np.ndarray]:
    weights = []
    for path, layer in zip(keras_paths(model.layers), model.layers):
        group_path = f"layers/{path}/cell/vars" if type(layer).__name__ in _CELL_LAYERS else (
            f"layers/{path}/vars")  # fmt: skip
        expected = [tuple(s) for s in layer.param_shapes()]
        group = h5.get(group_path)
        found = [] if group is None else [group[str(i)] for i in range(len(group))]
        arrays = [np.asarray(d[()]) for d in found][: len(expected)]
        shapes = [a.shape for a in arrays]
        if shapes != expected:
            raise ValueError(
                f"weights of layer {layer.name!r} at {group_path!r}: expected shapes "
                f"{expected}, the file holds {shapes}"
            )
        if any(a.dtype.kind not in "biuf" for a in arrays):
            raise ValueError(f"weights of layer {layer.name!r} are not numeric")
        weights += arrays
    return weights


def load_keras(path, model_class, backend: str | None = None):
    """Reads a Keras 3 ``.keras`` file (a Sequential model whose layers fastnn has) into a
    ``model_class`` (:class:`fastnn.Sequential`) with the same architecture and weights
    (not compiled: call ``compile`` before ``fit``).

    Raises
    ------
    ValueError
        If the file is not a ``.keras`` zip, holds a layer or option fastnn does not have, or
        its weights do not match the architecture.
    """
    h5py = _h5py()
    where = os.fspath(path)
    try:
        with zipfile.ZipFile(where) as zf:
            names = set(zf.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                raise ValueError(
                    f"{where!r} is not a Keras .keras file: it lacks config.json or "
                    "model.weights.h5"
                )
            config = json.loads(zf.read("config.json"))
            weights_bytes = zf.read("model.weights.h5")
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError,
            json.JSONDecodeError, UnicodeDecodeError) as exc:  # fmt: skip
        raise ValueError(f"{where!r} is not a readable Keras .keras file: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where!r}: config.json holds {type(config).__name__}, not a model")
    try:
        model = _model_from_keras(config, model_class, backend)
    except (KeyError, AttributeError, TypeError) as exc:  # a damaged or foreign config
        raise ValueError(f"{where!r}: config.json is not a model fastnn reads: {exc!r}") from None
    if not model._maybe_build():
        raise ValueError(f"{where!r}: the model has no input shape (no InputLayer)")
    try:
        h5 = h5py.File(io.BytesIO(weights_bytes), "r")
    except OSError as exc:
        raise ValueError(f"{where!r}: model.weights.h5 is not an HDF5 file: {exc}") from None
    with h5:
        try:
            weights = _read_weights(h5, model)
        except (KeyError, OSError) as exc:
            raise ValueError(f"{where!r}: model.weights.h5 is damaged: {exc!r}") from None
    model.set_weights(weights)
    return model
