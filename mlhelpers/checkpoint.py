"""Checkpoints that survive a crash mid-write and refuse to resume a different experiment. Chapter 1.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) that loads with
``torch.load(..., weights_only=True)``; :func:`save_checkpoint` writes it atomically (a reader sees
the old file or the new one) with a content checksum (:func:`content_sha256`, under the key
``"content_sha256"``) that :func:`load_checkpoint` verifies: a damaged file (truncated, empty,
garbage, flipped bytes) raises :class:`CorruptCheckpointError` naming it, instead of loading wrong
numbers or failing deep inside ``torch.load``. Checkpoints written before the checksum existed
still load. :func:`checkpoint_lock` keeps two runs from writing one file. What
:func:`mlhelpers.training.meta_train` stores in a checkpoint is listed in its ``_save``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import random
import re
import secrets
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere checkpoint_lock does not lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

import numpy as np
import torch

from mlhelpers import __version__

_MISSING = "<missing>"

CHECKSUM_KEY = "content_sha256"
"""The key under which :func:`save_checkpoint` stores the checkpoint's :func:`content_sha256`."""


class CorruptCheckpointError(ValueError):
    """A checkpoint or weights file that cannot be read back as written: truncated, empty, garbage,
    or its content no longer matches the checksum stored with it. The message names the file."""


class CheckpointInUseError(RuntimeError):
    """Another live run holds the lock of this checkpoint path (:func:`checkpoint_lock`)."""


def content_sha256(value: Any) -> str:
    """sha256 over a checkpoint's content: every key, type, tensor dtype, shape and byte, in order.

    It does not depend on how ``torch.save`` laid the file out, so it is the same after a round
    trip through a file; any changed number, string or key changes it.
    """
    digest = hashlib.sha256()
    _digest(value, digest)
    return digest.hexdigest()


def _digest(value: Any, digest: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}|".encode())
        if tensor.layout == torch.strided:
            tensor = tensor.contiguous()
            if tensor.numel():
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # sparse and other layouts: their serialised form
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            digest.update(buffer.getvalue())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}|".encode())
        for key, item in value.items():
            _digest(key, digest)
            _digest(item, digest)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)}|".encode())
        for item in value:
            _digest(item, digest)
    else:  # plain scalars: the type and an exact repr (floats round-trip through repr)
        text = f"{type(value).__name__}:{value!r}"
        digest.update(f"S{len(text)}|{text}".encode())

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
    ``weights_only`` loads (a TypeError names the offending entry); ``"version"`` is added if missing,
    and ``"content_sha256"`` (:func:`content_sha256`) is stored for :func:`load_checkpoint` to verify.
    Temporary files left by saves of ``path`` in processes that died (killed mid-write) are removed.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    if CHECKSUM_KEY in state:
        raise ValueError(f"state must not hold the key {CHECKSUM_KEY!r}: save_checkpoint writes it")
    _check_plain(state, "state")
    path = _checkpoint_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp_name = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
    content = {**state, "version": state.get("version", __version__)}
    content[CHECKSUM_KEY] = content_sha256(content)
    # Mode 0666 less the umask, as for any new file (mkstemp's 0600 would replace the file's own mode).
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            if path.exists():
                os.fchmod(file.fileno(), path.stat().st_mode & 0o777)
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def _checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` resolved through symlinks (a save replaces the link's target and keeps the link);
    a ValueError for an empty path or a directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    if os.fspath(path) == "":
        raise ValueError("checkpoint path must name a file, got an empty path ''")
    resolved = Path(path).resolve()
    if resolved.is_dir():
        raise ValueError(f"checkpoint path {str(path)!r} is a directory; it must name a file, such as "
                         f"{str(Path(path) / 'run.pt')!r}")
    return resolved


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{16}\.tmp$")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that saves of ``path`` left when their process died mid-write
    (``.<name>.<pid>.<random>.tmp`` of a pid that no longer runs); return the paths deleted.

    Temporaries of live processes (a save in progress) are kept.
    """
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = _TEMPORARY.match(entry.name)
            if match is None or match["name"] != path.name or _process_alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (ours counts: its own save may be in progress)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # it exists (another user's), or we cannot tell: keep its file
    return True


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early if a checkpoint could not be written at ``path``: a ValueError for an empty path,
    a directory or a parent that is not a directory, a PermissionError naming the directory if a
    file cannot be created in it (read-only, no permission).

    Creates the parent directory (as :func:`save_checkpoint` would) and a probe file, deleted at once.
    """
    resolved = _checkpoint_file(path)
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
        probe = resolved.parent / f".{resolved.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as error:
        kind = PermissionError if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ValueError
        raise kind(
            f"checkpoint_path={str(path)!r}: cannot write a file in directory {str(resolved.parent)!r} "
            f"({error.strerror or error}); choose a writable place before training starts"
        ) from None
    if resolved.exists() and not os.access(resolved, os.W_OK):
        raise PermissionError(f"checkpoint_path={str(path)!r} exists and is read-only; it could not be updated")
    return resolved


@contextlib.contextmanager
def checkpoint_lock(path: str | os.PathLike):
    """Hold an exclusive lock on checkpoint ``path`` for the duration of the ``with`` block.

    The lock is ``flock`` on a hidden ``.<name>.lock`` file beside ``path`` (deleted on exit): the
    operating system releases it when its process dies, so a crashed run never blocks the next one.
    A second holder, in this process or another, gets a :class:`CheckpointInUseError` naming the
    holder's pid and host. Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    resolved = _checkpoint_file(path)
    if fcntl is None:  # pragma: no cover
        yield resolved
        return
    resolved.parent.mkdir(parents=True, exist_ok=True)
    lock_path = resolved.parent / f".{resolved.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another run"
            os.close(fd)
            raise CheckpointInUseError(
                f"checkpoint_path={str(path)!r} is in use by {holder}: two runs writing one checkpoint "
                "would overwrite each other. Wait for it to finish, or give this run another checkpoint_path"
            ) from None
        try:  # the holder before us may have deleted the file after we opened it: lock the current one
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield resolved
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


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
    version loads with a warning. A file that cannot be read, or whose content does not match its
    stored checksum, raises :class:`CorruptCheckpointError`; the returned dict holds no checksum.
    Leftover temporary files of killed saves of ``path`` are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at path={str(path)!r}")
    remove_stale_temporaries(path.resolve())
    state = read_verified(path, what="checkpoint", advice=_ADVICE)
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


_ADVICE = ("delete it (or move it aside) to start that run afresh, or restore it from a copy; "
           "a killed save never damages a checkpoint, so suspect the disk or a copy of the file")


def read_verified(file: str | os.PathLike | io.BytesIO, *, what: str, advice: str) -> dict[str, Any]:
    """``torch.load(file, weights_only=True)`` of a dict, its content checksum verified and removed.

    Any failure to read it (empty, truncated, garbage, a pickle ``weights_only`` refuses) or a
    checksum mismatch raises :class:`CorruptCheckpointError` naming the ``what`` file and giving
    ``advice``. A dict without a checksum (written before it existed) is returned as it is.
    """
    name = repr(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else "(given as a file object)"
    if isinstance(file, (str, os.PathLike)) and os.path.getsize(file) == 0:
        raise CorruptCheckpointError(f"{what} {name} is damaged: it is empty (0 bytes). {advice}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged zip or pickle fails in many ways: EOFError, RuntimeError, ...
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no message'}"
        raise CorruptCheckpointError(
            f"{what} {name} is damaged (truncated, overwritten or not written by mlhelpers): torch.load "
            f"failed with {reason[:300]}. {advice}"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"{what} {name} holds a {type(state).__name__}, not a checkpoint dict")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is None and (damaged := _damaged_checksum_key(state)) is not None:
        raise CorruptCheckpointError(
            f"{what} {name} is damaged: it holds a checksum under the key {damaged!r} instead of "
            f"{CHECKSUM_KEY!r} (a flipped byte in the key's name), so its content cannot be verified. {advice}"
        )
    if stored is not None:
        found = content_sha256(state)
        if found != stored:
            raise CorruptCheckpointError(
                f"{what} {name} is damaged: its content sha256 is {found}, but {stored} was stored when it "
                f"was written (flipped bytes or an edited value). {advice}"
            )
    return state


def _damaged_checksum_key(state: dict[str, Any]) -> str | None:
    """A key that differs from :data:`CHECKSUM_KEY` in one character and holds a sha256 hex digest."""
    for key, value in state.items():
        if (isinstance(key, str) and len(key) == len(CHECKSUM_KEY)
                and sum(a != b for a, b in zip(key, CHECKSUM_KEY)) == 1
                and isinstance(value, str) and len(value) == 64):
            return key
    return None


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
