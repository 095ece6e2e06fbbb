"""Model files: one zip holding ``config.json`` and ``.npy`` arrays, read without pickle.

Layout of a file written by :func:`save_model` (``model.save(path)``)::

    config.json                 format name/version, model config, compile config,
                                training state (optimizer iterations, RNG states), the
                                name/dtype/shape of every array below and, when the
                                model has any, its ``metadata`` (optional)
    weights/<layer>/<weight>.npy  every weight by layer and weight name (trainable or not)
    optimizer/state.npy         the optimizer's state (slots, trainable parameters), once
                                trained

Files of format version 1 (``weights/000.npy ...`` in get_weights order) still load.

Loading never unpickles (``allow_pickle=False``), checks every array's name, dtype and
shape against the model rebuilt from the config, and refuses anything else with a
ValueError.  Files are written to a temporary file in the same folder and moved into
place, so an interrupted save leaves the previous file intact; they get the permissions of
a plain write (0666 & ~umask for a new file, the old file's for an overwritten one).
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
import zipfile
import zlib

import numpy as np

from . import initializers, keras_file, metrics
from .keras_file import keras_paths

FORMAT = "fastnn.model"
VERSION = 2
#: Format versions this fastnn reads.
READABLE_VERSIONS = (1, 2)
CONFIG_NAME = "config.json"
#: Largest config.json accepted (bytes)
MAX_CONFIG_BYTES = 16 * 2**20
#: Bytes of .npy header allowed on top of an array's data
NPY_HEADER_SLACK = 4096


class _Invalid(ValueError):
    pass


# ---------------------------------------------------------------------------------------
# Writing


def _write_array(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """Writes one array as ``name`` (a .npy member) into the open archive."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    zf.writestr(name, buf.getvalue())


def _umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode(path: str) -> int:
    """The permission bits a plain ``open(path, "wb")`` would leave: those of the file it
    overwrites, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _atomic_write(path, write) -> None:
    """Calls ``write(fileobj)`` on a temporary file next to ``path``, then moves it into
    place; on any error the temporary file is removed and ``path`` is untouched.  The file
    gets the permissions a plain write would give it (not the 0600 of a temporary file)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder!r} does not exist")
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _array_spec(array) -> dict:
    return {"dtype": np.dtype(array.dtype).str, "shape": list(array.shape)}


def _learning_rate_config(optimizer):
    from . import schedules

    if optimizer.schedule is not None:
        return schedules.serialize(optimizer.schedule)
    return float(optimizer.learning_rate)


def _compile_config(model):
    opt = model.optimizer
    if opt is None:
        return None
    opt_config = opt.get_config()
    opt_config["learning_rate"] = _learning_rate_config(opt)
    return {
        "optimizer": {"class_name": type(opt).__name__, "config": opt_config},
        "loss": {"class_name": type(model.loss).__name__, "config": model.loss.get_config()},
        "metrics": [metrics.serialize(m) for m in model.metric_objects],
    }


def _weight_members(model, version=VERSION) -> list[str]:
    """Member names of the model's weights, in get_weights order."""
    names = [(layer.name, spec.name) for layer in model.layers for spec in layer.weight_specs()]
    if version == 1:
        return [f"weights/{i:03d}.npy" for i in range(len(names))]
    return [f"weights/{layer}/{weight}.npy" for layer, weight in names]


def _model_arrays(model) -> dict[str, np.ndarray]:
    arrays = {}
    if model._maybe_build():
        arrays.update(zip(_weight_members(model), model.get_weights()))
    eng = model._engine
    if eng is not None and eng.state is not None and model.optimizer is not None:
        arrays["optimizer/state.npy"] = np.array(eng.host_state(), copy=True)
    return arrays


def _metadata(model) -> dict:
    """``model.metadata``, checked to be a dict that JSON stores and reads back unchanged."""
    meta = getattr(model, "metadata", None) or {}
    why = None
    if not isinstance(meta, dict):
        why = f"got {type(meta).__name__}"
    else:
        try:
            if json.loads(json.dumps(meta, allow_nan=False)) != meta:
                why = "it would not read back unchanged (tuples or non-string keys?)"
        except (TypeError, ValueError) as exc:
            why = str(exc)
    if why is not None:
        raise TypeError(
            "model.metadata must be a dict with string keys and JSON values (str, finite "
            f"numbers, bool, None, lists, dicts) to be saved; {why}"
        )
    return meta


def file_kind(path, arg: str) -> str:
    """``"keras"`` for a ``.keras`` name, ``"keras_weights"`` for ``.weights.h5``,
    ``"fastnn"`` otherwise; a ValueError for other ``.h5``/``.hdf5`` names (Keras 2's legacy
    HDF5 model format, which fastnn does not read or write)."""
    name = os.fspath(path).lower()
    if name.endswith(".keras"):
        return "keras"
    if name.endswith(".weights.h5"):
        return "keras_weights"
    if name.endswith((".h5", ".hdf5")):
        raise ValueError(
            f"{arg} {os.fspath(path)!r}: Keras 2's legacy HDF5 model format is not supported; "
            "use a .keras name (Keras 3's format), .fnn (fastnn's own, with optimizer state) "
            "or .weights.h5 for weights alone"
        )
    return "fastnn"


def save_model(model, path) -> None:
    """Writes ``model`` (config, weights, optimizer state, RNG states and its
    ``metadata``) to ``path``.

    Raises
    ------
    TypeError
        If ``model.metadata`` is not a JSON-serialisable dict with string keys.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    from ._version import __version__

    kind = file_kind(path, "path")
    if kind == "keras":
        return keras_file.save_keras(model, path)
    if kind == "keras_weights":
        raise ValueError(f"path {os.fspath(path)!r}: a .weights.h5 name is for save_weights")
    metadata = _metadata(model)
    arrays = _model_arrays(model)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "fastnn_version": __version__,
        "model": model.get_config(),
        "compile": _compile_config(model),
        "training": {
            "iterations": int(model.optimizer.iterations) if model.optimizer else 0,
            "dropout_seed": int(model._dropout_seed),
            "shuffle_rng": _rng_state(model._shuffle_rng),
        },
        "backend": model.backend_name,
        "arrays": {name: _array_spec(a) for name, a in arrays.items()},
    }
    if metadata:
        config["metadata"] = metadata
    text = json.dumps(config, indent=1, allow_nan=False)

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(CONFIG_NAME, text)
            for name, array in arrays.items():
                _write_array(zf, name, array)

    _atomic_write(path, write)


def _rng_state(rng: np.random.Generator) -> dict:
    state = rng.bit_generator.state
    json.dumps(state)  # PCG64 state: plain ints and strings
    return state


# ---------------------------------------------------------------------------------------
# Reading


def _open_zip(path, what):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such {what}: {path!r}")
    try:
        return zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, NotImplementedError, EOFError):
        raise ValueError(
            f"{path!r} is not a {what} (not a zip archive: truncated, damaged or another kind "
            "of file)"
        ) from None


def _read_member(zf, info, limit, path):
    if info.file_size > limit:
        raise _Invalid(f"member {info.filename!r} is {info.file_size} bytes, more than expected")
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise _Invalid(f"member {info.filename!r} cannot be read ({exc})") from None
    if len(data) > limit:
        raise _Invalid(f"member {info.filename!r} is larger than expected")
    return data


def _load_npy(data: bytes, name: str, dtype, shape) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise _Invalid(f"array {name!r} cannot be loaded without pickle ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is a damaged file
        raise _Invalid(f"array {name!r} is not a valid .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise _Invalid(f"array {name!r} is not a .npy array")
    if array.dtype != np.dtype(dtype):
        raise _Invalid(f"array {name!r} has dtype {array.dtype}, expected {np.dtype(dtype)}")
    if tuple(array.shape) != tuple(shape):
        raise _Invalid(f"array {name!r} has shape {array.shape}, expected {tuple(shape)}")
    if not np.all(np.isfinite(array)):
        raise _Invalid(f"array {name!r} contains NaN or infinite values")
    return array


def _expect(cond, message):
    if not cond:
        raise _Invalid(message)


def _read_config(zf):
    names = zf.namelist()
    _expect(CONFIG_NAME in names, f"it has no {CONFIG_NAME}")
    raw = _read_member(zf, zf.getinfo(CONFIG_NAME), MAX_CONFIG_BYTES, CONFIG_NAME)
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Invalid(f"{CONFIG_NAME} is not valid JSON ({exc})") from None
    _expect(isinstance(config, dict), f"{CONFIG_NAME} is not a JSON object")
    _expect(config.get("format") == FORMAT, f"format is {config.get('format')!r}, not {FORMAT!r}")
    version = config.get("version")
    _expect(
        version in READABLE_VERSIONS,
        f"format version {version!r} is not supported (this fastnn reads versions "
        f"{', '.join(map(str, READABLE_VERSIONS))}; a newer file needs a newer fastnn)",
    )
    for key, kind in (("model", dict), ("training", dict), ("arrays", dict)):
        _expect(isinstance(config.get(key), kind), f"{CONFIG_NAME} has no valid {key!r} entry")
    _expect(
        config.get("compile") is None or isinstance(config["compile"], dict),
        f"{CONFIG_NAME} has an invalid 'compile' entry",
    )
    _expect(
        isinstance(config.get("metadata", {}), dict),
        f"{CONFIG_NAME} has an invalid 'metadata' entry (not a JSON object)",
    )
    return config


def _rebuild(config, model_class, backend):
    """The model of the file's config; an initializer that was a Python callable (which
    the config names only) becomes zeros: the file's weights overwrite it."""
    model = config["model"]
    if isinstance(model, dict) and isinstance(model.get("layers"), list):
        layers = [
            {**entry, "config": initializers.without_callables(entry["config"])}
            if isinstance(entry, dict) and isinstance(entry.get("config"), dict) else entry
            for entry in model["layers"]
        ]  # fmt: skip
        model = {**model, "layers": layers}
    return model_class.from_config(model, backend=backend)


def _compile(model, cc):
    from . import losses, optimizers, schedules

    opt_entry, loss_entry = cc.get("optimizer"), cc.get("loss")
    _expect(isinstance(opt_entry, dict), "the compile config has no optimizer")
    _expect(isinstance(loss_entry, dict), "the compile config has no loss")
    opt_cls = optimizers.CLASSES.get(opt_entry.get("class_name"))
    _expect(opt_cls is not None, f"unknown optimizer {opt_entry.get('class_name')!r}")
    opt_cfg = dict(opt_entry.get("config") or {})
    lr = opt_cfg.get("learning_rate")
    if isinstance(lr, dict):
        opt_cfg["learning_rate"] = schedules.deserialize(lr)
    loss_cls = losses.CLASSES.get(loss_entry.get("class_name"))
    _expect(loss_cls is not None, f"unknown loss {loss_entry.get('class_name')!r}")
    entries = cc.get("metrics") or []
    _expect(isinstance(entries, list), "the compile config has invalid metrics")
    try:
        metric_list = [metrics.deserialize(m) for m in entries]
    except (TypeError, ValueError) as exc:
        raise _Invalid(f"the compile config has invalid metrics ({exc})") from None
    try:
        optimizer = opt_cls(**opt_cfg)
        loss = loss_cls(**(loss_entry.get("config") or {}))
    except TypeError as exc:
        raise _Invalid(f"invalid optimizer or loss config ({exc})") from None
    model.compile(optimizer=optimizer, loss=loss, metrics=metric_list)


def _expected_arrays(model, has_state, version) -> dict[str, tuple[np.dtype, tuple]]:
    expected = {}
    if model.built:
        shapes = [s for layer in model.layers for s in layer.param_shapes()]
        for name, shape in zip(_weight_members(model, version), shapes):
            expected[name] = (model.dtype, tuple(shape))
        if has_state:
            opt = model.optimizer
            slots = max(opt.slots, 1)
            expected["optimizer/state.npy"] = (model.dtype, (slots, model._engine.n_train))
    return expected


def _restore_training(model, training):
    iterations = training.get("iterations", 0)
    _expect(
        isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 0,
        f"invalid optimizer iterations {iterations!r}",
    )
    seed = training.get("dropout_seed")
    _expect(
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32,
        f"invalid dropout seed {seed!r}",
    )
    state = training.get("shuffle_rng")
    _expect(isinstance(state, dict), "invalid shuffle RNG state")
    rng = np.random.default_rng()
    _expect(
        state.get("bit_generator") == type(rng.bit_generator).__name__,
        f"unsupported shuffle RNG {state.get('bit_generator')!r}",
    )
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise _Invalid(f"invalid shuffle RNG state ({exc})") from None
    model._shuffle_rng = rng
    model._dropout_seed = seed
    if model.optimizer is not None:
        model.optimizer.iterations = iterations


def read_model(path, model_class, backend: str | None = None, compile: bool = True):
    """Reads a model written by ``model.save(path)`` as a ``model_class``
    (``fastnn.load_model`` passes Sequential): architecture, weights, ``metadata`` (empty for
    files without it) and, with ``compile``, optimizer (state and step count), loss, metrics
    and the shuffle/dropout random state, so ``fit`` continues exactly where the saved model
    stopped.

    Raises
    ------
    ValueError
        If the file is not a fastnn model file, is truncated or damaged, has an
        unsupported version, or holds an array whose name, dtype or shape does not match.
    """
    kind = file_kind(path, "path")
    if kind == "keras":
        return keras_file.load_keras(path, model_class, backend=backend)
    if kind == "keras_weights":
        raise ValueError(
            f"path {os.fspath(path)!r} holds weights alone: build the model and call "
            "model.load_weights(path)"
        )
    with _open_zip(path, "fastnn model file") as zf:
        try:
            return _load(zf, model_class, backend, compile)
        except _Invalid as exc:
            raise ValueError(
                f"{os.fspath(path)!r} is not a valid fastnn model file: {exc}"
            ) from None
        except zipfile.BadZipFile as exc:
            raise ValueError(
                f"{os.fspath(path)!r} is not a valid fastnn model file: {exc}"
            ) from None


def _load(zf, model_class, backend, compile):
    config = _read_config(zf)
    try:
        model = _rebuild(config, model_class, backend)
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, _Invalid):
            raise
        raise _Invalid(f"invalid model config ({exc})") from None
    has_state = "optimizer/state.npy" in config["arrays"]
    cc = config.get("compile")
    _expect(not has_state or cc is not None, "optimizer state without a compile config")
    if cc is not None:
        try:
            _compile(model, cc)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, _Invalid):
                raise
            raise _Invalid(f"invalid compile config ({exc})") from None
    expected = _expected_arrays(model, has_state, config["version"])
    manifest = config["arrays"]
    _expect(
        set(manifest) == set(expected),
        f"its arrays {sorted(manifest)} do not match the model's {sorted(expected)}",
    )
    infos = zf.infolist()
    members = {info.filename: info for info in infos}
    _expect(len(members) == len(infos), "it holds duplicate members")
    unexpected = set(members) - set(expected) - {CONFIG_NAME}
    _expect(not unexpected, f"it holds unexpected members {sorted(unexpected)}")
    arrays = {}
    for name, (dtype, shape) in expected.items():
        spec = manifest[name]
        _expect(
            isinstance(spec, dict)
            and spec.get("dtype") == np.dtype(dtype).str
            and spec.get("shape") == list(shape),
            f"array {name!r} is declared as {spec!r}, expected dtype {np.dtype(dtype).str} "
            f"and shape {list(shape)}",
        )
        _expect(name in members, f"array {name!r} is missing")
        limit = int(np.prod(shape)) * np.dtype(dtype).itemsize + NPY_HEADER_SLACK
        data = _read_member(zf, members[name], limit, name)
        arrays[name] = _load_npy(data, name, dtype, shape)
    if model.built:
        model.set_weights([arrays[n] for n in _weight_members(model, config["version"])])
    _restore_training(model, config["training"])
    model.metadata = config.get("metadata", {})
    if has_state:
        model._stack_plan()
        model._engine.set_state(arrays["optimizer/state.npy"])
    if not compile and model.optimizer is not None:
        model.optimizer = model.loss = model._plan = None
        model._metric_set = metrics.MetricSet([])
        model._metric_kinds = []
        if model._engine is not None:
            model._engine.state = None
    return model


# ---------------------------------------------------------------------------------------
# Weights only


def _weight_names(model) -> list[str]:
    return [
        f"{path}/{spec.name}"
        for path, layer in zip(keras_paths(model.layers), model.layers)
        for spec in layer.weight_specs()
    ]


def save_weights(model, path) -> None:
    """Writes the model's weights to a .npz (names ``<layer path>/<weight>``:
    ``dense/kernel``, ``batch_normalization/moving_mean``, ...; the layer paths of
    :func:`fastnn.keras_file.keras_paths`, whatever the layers are named)."""
    if file_kind(path, "path") == "keras_weights":
        return keras_file.save_weights_h5(model, path)
    if not model._maybe_build():
        raise RuntimeError("the model is not built yet: there are no weights to save")
    arrays = dict(zip(_weight_names(model), model.get_weights()))

    def write(f):
        np.savez(f, allow_pickle=False, **arrays)

    _atomic_write(path, write)


def load_weights(model, path) -> None:
    """Reads weights written by :func:`save_weights` into ``model`` (names, dtypes and
    shapes must match; nothing is changed if any does not)."""
    if file_kind(path, "path") == "keras_weights":
        return keras_file.load_weights_h5(model, path)
    if not model._maybe_build():
        raise RuntimeError("the model is not built yet: give input_dim or call build()")
    names = _weight_names(model)
    shapes = [s for layer in model.layers for s in layer.param_shapes()]
    where = os.fspath(path)
    zf = _open_zip(path, "fastnn weights file")
    zf.close()
    try:
        with np.load(where, allow_pickle=False) as npz:
            found = sorted(npz.files)
            if found != sorted(names):
                raise _Invalid(f"it holds arrays {found}, the model expects {sorted(names)}")
            weights = []
            for name, shape in zip(names, shapes):
                try:
                    array = npz[name]
                except ValueError as exc:
                    raise _Invalid(
                        f"array {name!r} cannot be loaded without pickle ({exc})"
                    ) from None
                if array.dtype.kind not in "biuf":
                    raise _Invalid(f"array {name!r} has non-numeric dtype {array.dtype}")
                if array.shape != tuple(shape):
                    raise _Invalid(f"array {name!r} has shape {array.shape}, expected {shape}")
                weights.append(array)
    except _Invalid as exc:
        raise ValueError(f"{where!r} is not a valid weights file for this model: {exc}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{where!r} is not a valid weights file: {exc}") from None
    model.set_weights(weights)


def load_model(path, backend: str | None = None, compile: bool = True):
    """:func:`fastnn.load_model` under Keras 3's other name (``keras.saving.load_model``)."""
    from .models import load_model as load

    return load(path, backend=backend, compile=compile)


def to_bytes(model) -> bytes:
    """The bytes of ``model`` as a ``.fnn`` file (what pickling a model carries)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.fnn")
        save_model(model, path)
        with open(path, "rb") as f:
            return f.read()


def from_bytes(data: bytes, backend: str | None = None):
    """The model of :func:`to_bytes`'s ``data``, as :func:`fastnn.load_model` reads it."""
    from .model import Sequential

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.fnn")
        with open(path, "wb") as f:
            f.write(data)
        return read_model(path, Sequential, backend=backend)
