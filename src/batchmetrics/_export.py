"""Atomic file writes with aiofiles: a temp file in the same folder, fsync, ``os.replace``.

A reader sees the previous file or the complete new one, never half of one; a
failed write leaves the previous file as it was and no temp file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiofiles
import aiofiles.os
import aiofiles.threadpool
import anyio
from aiofiles.threadpool.text import AsyncTextIOWrapper

from ._blocking import FILE_EXECUTOR
from ._events import Event
from ._render import TEXT_ERRORS, csv_header, csv_rows, export_json_chunks


class ExportError(OSError):
    """An export could not be written; the previous file at that path is intact."""


#: The longest file name most file systems take, in bytes.
_NAME_MAX = 255


def temp_name(name: str, token: str) -> str:
    """``.{name}.{token}.tmp``, ``name`` cut short if needed to stay within ``_NAME_MAX`` bytes."""
    suffix = f".{token}.tmp"
    room = _NAME_MAX - 1 - len(suffix)
    name = name[:room]
    while len(os.fsencode(name)) > room:  # multi-byte characters: cut whole ones
        name = name[:-1]
    return f".{name}{suffix}"


def _temp_path(target: str) -> str:
    folder, name = os.path.split(target)
    return os.path.join(folder, temp_name(name, uuid.uuid4().hex[:12]))


#: How long a cancelled write waits for its temp file to be closed and removed. On a
#: healthy disk that is instant; on a hung one the caller's deadline must still hold.
_CLEANUP_WAIT = 2.0


async def _open_temp(tmp: str) -> AsyncTextIOWrapper:
    """Create ``tmp`` for writing, in a file thread. Cancellable: an open can hang on a
    dead mount. A file created after its caller gave up is closed (and the caller
    removes it): waited for a moment, else closed and removed whenever it comes."""
    # a file name read from undecodable bytes (os.listdir gives lone surrogates for
    # them) is written back as those same bytes (TEXT_ERRORS)
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(FILE_EXECUTOR, functools.partial(
        open, tmp, "x", encoding="utf-8", errors=TEXT_ERRORS, newline=""))
    try:
        raw = await asyncio.shield(opening)
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_WAIT), \
                contextlib.suppress(Exception):
            await opening
        if opening.done():
            _drop_unclaimed(tmp, opening)
        else:  # a hung disk: when (if) it comes
            opening.add_done_callback(functools.partial(_drop_unclaimed, tmp))
        raise
    return aiofiles.threadpool.wrap(raw, loop=loop, executor=FILE_EXECUTOR)  # type: ignore[no-any-return]


def _drop_unclaimed(tmp: str, opening: asyncio.Future[Any]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
        with contextlib.suppress(OSError):
            os.remove(tmp)


def replaced_mode(target: str) -> int | None:
    """The permission bits the file replacing ``target`` keeps: those of the regular file
    there now, or ``None`` (nothing there, or a link: a new file's mode). ``ValueError``
    if ``target`` is, or links to, something a regular file must not replace (a device,
    a FIFO, a socket): replacing ``/dev/null`` or a FIFO a reader waits on breaks them.
    Blocking: call it in a file thread."""
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None  # nothing there, or a dangling link (replaced as a file)
    if stat.S_ISDIR(st.st_mode):
        raise ValueError("it is a folder")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("it is not a regular file (a device, a FIFO or a socket), which "
                         "writing a new file in its place would replace")
    return None if os.path.islink(target) else stat.S_IMODE(st.st_mode)


def _take_mode_of(target: str, tmp: str) -> None:
    """Give ``tmp`` the mode of the file it will replace (see ``replaced_mode``)."""
    mode = replaced_mode(target)
    if mode is not None:
        os.chmod(tmp, mode)


@asynccontextmanager
async def atomic_text_file(path: str | os.PathLike[str]) -> AsyncIterator[AsyncTextIOWrapper]:
    """Open a temp file beside ``path``; on success it replaces ``path`` atomically.

    The new file keeps the permission bits of the one it replaces (an export of a
    private file stays private). A cancelled or failed write leaves the previous file,
    and neither an open file nor a temp file behind (on a hung disk it gives up waiting
    for that after a moment).
    """
    target = os.fspath(path)
    loop = asyncio.get_running_loop()
    tmp = _temp_path(target)
    try:
        f = await _open_temp(tmp)
        try:
            # one hop for the check and the mode: the summary file is written every tick
            await loop.run_in_executor(FILE_EXECUTOR, _take_mode_of, target, tmp)
            yield f
            await f.flush()
            await loop.run_in_executor(FILE_EXECUTOR, os.fsync, f.fileno())
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_WAIT):
                await f.close()
        await aiofiles.os.replace(tmp, target, executor=FILE_EXECUTOR)
    except BaseException as exc:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_WAIT), \
                contextlib.suppress(OSError):
            await aiofiles.os.remove(tmp, executor=FILE_EXECUTOR)
        if isinstance(exc, Exception):
            raise ExportError(f"could not write {target!r}: {exc}") from exc
        raise


async def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    async with atomic_text_file(path) as f:
        await f.write(text)


async def write_chunks_atomic(path: str | os.PathLike[str], chunks: Iterable[str]) -> None:
    """Replace ``path`` with the concatenated chunks atomically, one write per chunk."""
    async with atomic_text_file(path) as f:
        for chunk in chunks:
            await f.write(chunk)


async def write_json(
    path: str | os.PathLike[str],
    summary: dict[str, Any],
    state: dict[str, Any] | None,
    rows: Iterable[Event],
) -> None:
    """The JSON export, atomically."""
    await write_chunks_atomic(path, export_json_chunks(summary, state, rows))


def _csv_chunks(rows: Iterable[Event], chunk_rows: int = 2000) -> Iterator[str]:
    """The CSV export's text, a chunk at a time: each is rendered on the event loop,
    so a chunk stays small (2,000 rows: a few ms)."""
    yield csv_header()
    chunk: list[Event] = []
    for ev in rows:
        chunk.append(ev)
        if len(chunk) >= chunk_rows:
            yield csv_rows(chunk)
            chunk = []
    if chunk:
        yield csv_rows(chunk)


async def write_csv(path: str | os.PathLike[str], rows: Iterable[Event]) -> None:
    """The CSV export, atomically."""
    await write_chunks_atomic(path, _csv_chunks(rows))
