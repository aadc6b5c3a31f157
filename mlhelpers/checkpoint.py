"""Checkpoints that survive a crash mid-write and refuse to resume a different experiment. Chapter 1.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) that loads with
``torch.load(..., weights_only=True)``; :func:`save_checkpoint` writes it atomically (a reader sees
the old file or the new one). What :func:`mlhelpers.training.meta_train` stores in it is listed in
its ``_save``.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlhelpers import __version__

_MISSING = "<missing>"

# Types that torch.load(weights_only=True) accepts, checked before writing so that a bad value is
# reported when it is saved (with its place in the dict) rather than when it is loaded.
_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def _check_plain(value: Any, where: str) -> None:
    """Raise a TypeError naming ``where`` if ``value`` would not load with ``weights_only=True``."""
    if isinstance(value, (torch.Tensor, *_PLAIN_SCALARS)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; expected str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}; a checkpoint may hold only "
        "tensors, numbers, strings, booleans, None, lists, tuples and dicts of these"
    )


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``), creating the parent
    directory; on failure an existing ``path`` is left untouched. A symlink keeps pointing at the
    file it named and an existing file keeps its permissions. ``state`` may hold only what
    ``weights_only`` loads (a TypeError names the offending entry); ``"version"`` is added if missing.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")
    path = Path(path).resolve()  # through a symlink: replace its target, keep the link
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # Mode 0666 less the umask, as for any new file (mkstemp's 0600 would replace the file's own mode).
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            if path.exists():
                os.fchmod(file.fileno(), path.stat().st_mode & 0o777)
            torch.save({**state, "version": state.get("version", __version__)}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def config_differences(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, expected value)}`` for every key whose values differ or is in only one.

    A key present on one side only is reported with the string ``"<missing>"`` on the other.
    """
    differences = {}
    for key in sorted(set(saved) | set(expected), key=str):
        a = saved.get(key, _MISSING)
        b = expected.get(key, _MISSING)
        if not _same(a, b):
            differences[key] = (a, b)
    return differences


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (1 and 1.0 match; True and 1, or (1,) and [1], do not)."""
    if _is_number(a) and _is_number(b):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_checkpoint(
    path: str | os.PathLike, expected_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU (``weights_only=True``).

    With ``expected_config``, the checkpoint's ``"config"`` must match it exactly: otherwise a
    ValueError lists every differing key with the saved and the expected value, so a run is never
    silently resumed with different settings. A checkpoint written by another ``mlhelpers``
    version loads with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at path={str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, not a checkpoint dict")
    version = state.get("version")
    if version != __version__:
        warnings.warn(
            f"checkpoint {str(path)!r} was written by mlhelpers {version}, this is {__version__}",
            stacklevel=2,
        )
    if expected_config is not None:
        if not isinstance(expected_config, Mapping):
            raise TypeError(f"expected_config must be a dict or None, got {type(expected_config).__name__}")
        saved = state.get("config")
        if not isinstance(saved, Mapping):
            raise ValueError(f"checkpoint {str(path)!r} has no 'config' dict to compare with expected_config")
        differences = config_differences(saved, expected_config)
        if differences:
            lines = "; ".join(f"{k!r}: saved {a!r}, expected {b!r}" for k, (a, b) in differences.items())
            raise ValueError(
                f"checkpoint {str(path)!r} was written with a different config ({lines}). "
                "Use another checkpoint_path, or delete the file to start afresh."
            )
    return state


def rng_state() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, Python ``random``, NumPy) as plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": {
            "algorithm": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the global random states saved by :func:`rng_state`; a ValueError names what is missing."""
    missing = sorted({"torch", "python", "numpy"} - set(state)) if isinstance(state, Mapping) else None
    if missing is None or missing:
        got = f"keys {sorted(state)}" if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"state must be a dict from rng_state() with 'torch', 'python' and 'numpy', got {got}")
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["algorithm"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
