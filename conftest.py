"""Every notebook that pytest runs (nbval, ``make test``) runs offline.

nbval's kernels inherit this process's environment. Before the first notebook cell, the guard
folder tests/kernel_guard/ goes on ``PYTHONPATH`` (its ``sitecustomize.py`` blocks and records
non-loopback connections in each kernel) together with the record file; after each cell, a
recorded attempt fails that cell, even if the notebook caught the error.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

GUARD = Path(__file__).resolve().parent / "tests" / "kernel_guard"
SOCKET_LOG = Path(tempfile.gettempdir()) / f"mlhelpers-sockets-{os.getpid()}.log"


def is_notebook_cell(item: pytest.Item) -> bool:
    return item.path.suffix == ".ipynb"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before nbval starts a notebook's kernel (in its first cell's setup): guard the environment."""
    if not is_notebook_cell(item):
        return
    if os.environ.get("MLHELPERS_SOCKET_LOG") != str(SOCKET_LOG):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(GUARD), os.environ.get("PYTHONPATH")) if p)
        os.environ["MLHELPERS_SOCKET_LOG"] = str(SOCKET_LOG)
    SOCKET_LOG.write_text("")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    if is_notebook_cell(item):
        attempts = SOCKET_LOG.read_text()
        if attempts:
            raise AssertionError(f"{item.path.name} tried to use the network:\n{attempts}")
    return result


def pytest_unconfigure(config: pytest.Config) -> None:
    SOCKET_LOG.unlink(missing_ok=True)
