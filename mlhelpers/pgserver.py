"""A throwaway PostgreSQL server for Chapter 6's shared study on one machine (appendix "Scaling out").

:func:`temporary_postgres` starts a private cluster (``initdb`` + ``pg_ctl`` in a temporary directory,
listening on 127.0.0.1 at a free port, trust authentication) with one empty database, yields its
URL for :func:`mlhelpers.hpo.open_study`, and deletes everything on exit::

    with temporary_postgres() as url:      # postgresql+psycopg2://postgres@127.0.0.1:PORT/studies
        study = open_study("shared", url)

It needs the server's programs (Debian: ``apt-get install postgresql``; ``scripts/install-postgres.sh``)
and, to talk to it from Python, ``pip install "mlhelpers[postgres]"``; :func:`unavailable_reason`
says which is missing. As root, the cluster runs as the ``postgres`` user (``initdb`` refuses root).
On a real cluster of machines, use a server that all of them reach instead.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

DRIVER = "psycopg2"


def server_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: [int(x) for x in Path(p).parent.parent.name.split(".") if x.isdigit()])
    return Path(versions[-1]).parent if versions else None


def unavailable_reason() -> str | None:
    """Why :func:`temporary_postgres` cannot run here (a sentence), or None if it can."""
    if server_bin() is None:
        return "the PostgreSQL server is not installed (no initdb; Debian: scripts/install-postgres.sh)"
    if importlib.util.find_spec(DRIVER) is None:
        return f"the database driver {DRIVER} is not installed (pip install 'mlhelpers[postgres]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as (initdb refuses root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temporary_postgres(database: str = "studies", timeout: float = 60.0) -> Iterator[str]:
    """Start a private PostgreSQL server with the empty database ``database``; yield its SQLAlchemy URL.

    A RuntimeError says why if it cannot run (:func:`unavailable_reason`) or carries the server's
    log if it does not start within ``timeout`` seconds. The server is stopped and its files
    deleted on exit."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot start a temporary PostgreSQL server: {reason}")
    bin_dir = server_bin()
    root = Path(tempfile.mkdtemp(prefix="mlhelpers-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        runuser = shutil.which("runuser")
        as_user = [runuser, "-u", "postgres", "--"] if runuser else ["su", "-s", "/bin/sh", "postgres", "-c"]

    def run(*command: str) -> None:
        full = [*as_user, " ".join(command)] if as_user[:1] == ["su"] else [*as_user, *command]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=root)
        if result.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"{Path(command[0]).name} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}\n{log[-2000:]}")

    port = _free_port()
    data = root / "data"
    started = False
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", str(int(timeout)),
            "-o", f"'-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off'" if as_user[:1] == ["su"]
            else f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        started = True
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql+{DRIVER}://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
