"""The default paths never touch the network: loaders, samplers and the pretrained learner run
with sockets blocked, and so does every notebook.

In this process the guard patches :mod:`socket` (conftest's ``no_network``). A notebook's kernel is
another process: it gets the guard from tests/kernel_guard/sitecustomize.py on its ``PYTHONPATH``,
which refuses non-loopback connections and records every attempt in a file. The repository's
top-level conftest.py sets that up for every notebook nbval runs (``make test``) and fails a cell
whose kernel made an attempt, even one the notebook caught; so the chapters are not executed a
second time here. The tests below check the guard itself in a fresh interpreter, and the wiring
through nbval on two one-cell notebooks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.regression import LinearTasks, SinusoidTasks

GUARD = Path(__file__).resolve().parent / "kernel_guard"


def test_the_guard_blocks_connections(no_network):
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("example.org", 80))
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.getaddrinfo("example.org", 443)


def test_shipped_data_and_task_families_load_offline(no_network):
    omniglot = load_omniglot()
    task = EpisodicSampler(omniglot, 5, 1, 1, split="test", seed=0).sample(2)
    assert task.support_x.shape == (2, 5, 1, 28, 28)
    assert torch.isfinite(SinusoidTasks(5, 5, seed=0).sample(2).query_y).all()
    assert LinearTasks(3, 5, 5, seed=0).sample(2).support_x.shape == (2, 5, 3)


def test_the_pretrained_learner_loads_offline(no_network):
    from mlhelpers import pretrained

    learner = pretrained.load()  # weights shipped in the package
    task = EpisodicSampler(load_omniglot(), 5, 1, 2, split="test", seed=0).sample(1)
    with torch.no_grad():
        outputs = learner(task)
    assert outputs.shape == (1, 10, 5) and torch.isfinite(outputs).all()


def test_the_kernel_guard_refuses_and_records(tmp_path):
    log = tmp_path / "sockets.log"
    log.write_text("")
    path = os.pathsep.join(p for p in (str(GUARD), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MLHELPERS_SOCKET_LOG": str(log)}
    code = ("import socket, urllib.request\n"
            "socket.getaddrinfo('localhost', 80)  # loopback stays open: kernels talk to their client\n"
            "try:\n    urllib.request.urlopen('http://example.org', timeout=5)\n"
            "except OSError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "blocked by the offline test" in out.stdout
    assert "example.org" in log.read_text()  # recorded even though the code caught the error


def _notebook(path: Path, code: str) -> Path:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": code}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


@pytest.mark.slow
def test_nbval_kernels_run_with_the_guard(tmp_path):
    """The wiring, end to end: nbval run with the repository's conftest.py as a plugin fails a notebook
    whose kernel tried to connect (and caught the error), and passes one that did not."""
    root = Path(__file__).resolve().parents[1]
    caught = ("import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=2)\n"
              "except OSError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    env.pop("MLHELPERS_SOCKET_LOG", None)

    def nbval(notebook: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "conftest", "--nbval-lax", "--nbval-current-env", "-q",
             "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(notebook)],
            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )

    offline = nbval(_notebook(tmp_path / "offline.ipynb", "print(1 + 1)\n"))
    assert offline.returncode == 0, offline.stdout[-2000:]
    online = nbval(_notebook(tmp_path / "online.ipynb", caught))
    assert online.returncode != 0 and "tried to use the network" in online.stdout, online.stdout[-2000:]
