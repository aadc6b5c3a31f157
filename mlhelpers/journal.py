"""An Optuna journal file that survives a crash or a full disk mid-write. Chapter 6.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` appends one JSON line per operation.
A write cut short (the process killed, the disk full) leaves a torn last line without its newline;
Optuna skips it once, but the next append is glued onto it, and from then on the journal cannot be
read (``JSONDecodeError``). :class:`SafeJournalFileBackend` never appends after a torn line: it cuts
the torn tail first, and undoes its own partial write when the write fails. :func:`repair_journal`
mends a journal already damaged that way (every complete line kept, a glued one unglued).
:func:`mlhelpers.hpo.open_study` uses both.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from optuna.storages.journal import JournalFileBackend

# Optuna's own lock helper (not exported): the lock every JournalFileBackend on the file shares.
from optuna.storages.journal._file import get_lock_file

_LOG_START = b'{"op_code":'
"""How every line Optuna writes begins (``json.dumps`` of a dict whose first key is ``op_code``)."""


class SafeJournalFileBackend(JournalFileBackend):
    """A :class:`~optuna.storages.journal.JournalFileBackend` whose appends never follow a torn line.

    Under the journal's lock, an append first cuts a last line that has no newline (a write that
    died), with a warning saying how many bytes went, then writes; if the write fails (disk full),
    the file is cut back to its size before the append, so no torn line is left for the next one.
    """

    def append_logs(self, logs: list[dict]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        with get_lock_file(self._lock):
            with open(self._file_path, "ab+") as file:  # appends land at the end, after any cut
                size = _cut_torn_tail(file, self._file_path)
                file.seek(size)
                try:
                    file.write(text)
                    file.flush()
                    os.fsync(file.fileno())
                except BaseException:
                    file.truncate(size)  # nothing of this append stays
                    raise


def _cut_torn_tail(file, path: str) -> int:
    """Cut the file after its last newline if it does not end with one; return its size."""
    size = file.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    file.seek(size - 1)
    if file.read(1) == b"\n":
        return size
    keep, step = 0, 65536
    position = size
    while position > 0:  # the last newline, reading backwards in blocks
        start = max(0, position - step)
        file.seek(start)
        block = file.read(position - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        position = start
    file.truncate(keep)
    warnings.warn(f"journal {path!r} ended in a torn line (a write cut short); cut its {size - keep} bytes",
                  stacklevel=3)
    return keep


def repair_journal(path: str | os.PathLike) -> int:
    """Mend the journal file at ``path`` in place; return how many damaged lines were dropped or unglued.

    A line that is not valid JSON is either a torn write with a complete log appended to it (the
    complete log, from its last ``{"op_code":``, is kept) or a torn write alone (dropped); a torn last
    line is dropped. Every complete log stays, in order. A journal without damage is not rewritten.
    The rewrite is atomic and holds the journal's lock.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    backend = JournalFileBackend(str(path))
    with get_lock_file(backend._lock):
        data = path.read_bytes()
        kept, damaged = [], 0
        lines = data.split(b"\n")
        torn_tail = lines.pop()  # b"" when the file ends with a newline
        if torn_tail:
            damaged += 1
        for line in lines:
            if _parses(line):
                kept.append(line)
                continue
            damaged += 1
            start = line.rfind(_LOG_START)
            if start > 0 and _parses(line[start:]):
                kept.append(line[start:])
        if not damaged:
            return 0
        tmp = path.with_name(f".{path.name}.repair")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, path)
    warnings.warn(f"journal {str(path)!r} had {damaged} torn line(s) (writes cut short); repaired, "
                  f"{len(kept)} complete log(s) kept", stacklevel=2)
    return damaged


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False
