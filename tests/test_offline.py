"""The default paths never touch the network: loaders, samplers, the pretrained learner and a
chapter notebook run with sockets blocked.

In this process the guard patches :mod:`socket`; a notebook's kernel is another process, so it
gets the same guard from a ``sitecustomize.py`` on its ``PYTHONPATH``, which also records every
attempt in a file, so that a notebook that swallows the error still fails the test.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.data.regression import LinearTasks, SinusoidTasks
from mlhelpers.episodes import EpisodicSampler

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_bilevel_optimisation.ipynb"


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


# --- a notebook, in a kernel whose sockets are blocked ----------------------------------------

SITECUSTOMIZE = textwrap.dedent(
    '''
    """Test guard (tests/test_offline.py): this interpreter may not use the network."""
    import os
    import socket

    _LOG = os.environ["MLHELPERS_SOCKET_LOG"]
    _LOCAL = ("127.0.0.1", "::1", "localhost")


    def _refuse(what, target):
        with open(_LOG, "a") as log:
            log.write(f"{what} {target!r}\\n")
        raise OSError(f"network access blocked by the offline test: {what} {target!r}")


    def _local(address):
        host = address[0] if isinstance(address, tuple) and address else address
        return isinstance(host, str) and host in _LOCAL


    _connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo


    def connect(self, address):
        # The kernel talks to its client over localhost (and Unix sockets); nothing else goes.
        if self.family == socket.AF_UNIX or _local(address):
            return _connect(self, address)
        _refuse("connect", address)


    def connect_ex(self, address):
        return connect(self, address) or 0


    def getaddrinfo(host, *args, **kwargs):
        if host is None or _local((host,)):
            return _getaddrinfo(host, *args, **kwargs)
        _refuse("getaddrinfo", host)


    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
    '''
)


def guarded_environment(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose Python processes load the guard; and the file it logs attempts to."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "sockets.log"
    log.write_text("")
    path = os.pathsep.join(p for p in (str(guard), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MLHELPERS_SOCKET_LOG": str(log), "MLHELPERS_QUICK": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "Agg"}
    return env, log


def test_the_kernel_guard_refuses_and_records(tmp_path):
    import subprocess

    env, log = guarded_environment(tmp_path)
    code = ("import urllib.request\ntry:\n    urllib.request.urlopen('http://example.org', timeout=5)\n"
            "except OSError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "blocked by the offline test" in out.stdout
    assert "example.org" in log.read_text()  # recorded even though the code caught the error


def run_notebook(notebook, env: dict[str, str], timeout: int) -> None:
    """Execute ``notebook`` in place with a kernel on this interpreter started with ``env``."""
    import nbclient

    # "python3" is jupyter_client's native kernel: sys.executable -m ipykernel_launcher, the
    # interpreter running the tests (as make test's --nbval-current-env).
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=timeout, allow_errors=False,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=env)


def test_a_chapter_notebook_runs_in_quick_mode_without_the_network(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    env, log = guarded_environment(tmp_path)

    # The guard is active in the kernel: a connection attempt is refused and recorded.
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import socket\ntry:\n    socket.create_connection(('example.org', 80), timeout=5)\n"
        "except OSError as error:\n    print(error)")])
    run_notebook(probe, env, timeout=300)
    assert "blocked by the offline test" in probe.cells[0].outputs[0]["text"]
    assert "example.org" in log.read_text()
    log.write_text("")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    run_notebook(notebook, env, timeout=1200)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "not every code cell ran"
    assert log.read_text() == "", f"the notebook tried to use the network:\n{log.read_text()}"
