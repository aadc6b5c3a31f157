"""Run-time switches shared by every chapter (Chapter 1): quick mode and the default device.

Quick mode shrinks training budgets so that every notebook runs in a couple of minutes in CI, on
exactly the code path of a full run: ``MLHELPERS_QUICK=1`` or :func:`set_quick_mode`.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

QUICK_ENV_VAR = "MLHELPERS_QUICK"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_override: bool | None = None

T = TypeVar("T")


def quick_mode() -> bool:
    """Return True when budgets should be small (CI, tests, a reader in a hurry)."""
    if _override is not None:
        return _override
    value = os.environ.get(QUICK_ENV_VAR, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{QUICK_ENV_VAR}={os.environ[QUICK_ENV_VAR]!r} is not understood; "
        f"expected one of {sorted(_TRUE | _FALSE - {''})}"
    )


def set_quick_mode(enabled: bool | None) -> None:
    """Force quick mode on or off in this process; ``None`` returns control to the environment."""
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {type(enabled).__name__} {enabled!r}")
    _override = enabled


def budget(full: T, quick: T) -> T:
    """Pick a budget: ``full`` normally, ``quick`` in quick mode.

    Example:
        >>> steps = budget(full=20_000, quick=200)
    """
    return quick if quick_mode() else full


def default_device() -> torch.device:
    """CUDA when available, else CPU. Pass ``device=`` explicitly to override anywhere.

    Under ``torchrun`` (``LOCAL_RANK`` set) it is this process's own GPU, ``cuda:LOCAL_RANK``, so
    that a script runs on several GPUs unchanged (appendix "Scaling out")."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = os.environ.get("LOCAL_RANK", "")
    return torch.device("cuda", int(local_rank)) if local_rank.isdigit() else torch.device("cuda")


def module_device(module: torch.nn.Module, default: torch.device | str | None = None) -> torch.device | None:
    """The device of ``module``'s first parameter; ``default`` (as a device) for a module without any."""
    for p in module.parameters():
        return p.device
    return torch.device(default) if default is not None else None
