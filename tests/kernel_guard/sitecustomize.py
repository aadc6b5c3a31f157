"""Offline guard for Python processes started with this folder on ``PYTHONPATH`` (notebook kernels).

Python imports ``sitecustomize`` at startup. When ``MLHELPERS_SOCKET_LOG`` names a file, every
attempt to resolve or connect to a non-loopback host is refused with ``OSError`` and appended to
that file, so that a cell which swallows the error is still caught. The repository's conftest.py
puts this on every notebook kernel's path; tests/test_offline.py checks the guard itself.
"""

import os
import socket

_LOG = os.environ.get("MLHELPERS_SOCKET_LOG")
_LOCAL = ("127.0.0.1", "::1", "localhost")


def _refuse(what, target):
    with open(_LOG, "a") as log:
        log.write(f"{what} {target!r}\n")
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


if _LOG:
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
