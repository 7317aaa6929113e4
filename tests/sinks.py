"""Small sinks for tests: ones that fail, hang or are slow, each where a real disk would."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from batchmetrics import FileRecord


class _TakesAll:
    """Takes every write, flush and close at once; the sinks below change one of them."""

    async def write(self, records: Sequence[FileRecord]) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class FailingSink(_TakesAll):
    """Every write fails as a full disk would; remembers that it was closed."""

    def __init__(self) -> None:
        self.closed = False

    async def write(self, records: Sequence[FileRecord]) -> None:
        raise OSError("disk full")

    async def aclose(self) -> None:
        self.closed = True


class HungSink(_TakesAll):
    """Writes never end (a hung network disk)."""

    async def write(self, records: Sequence[FileRecord]) -> None:
        await anyio.sleep_forever()


class SlowFirstWrite(_TakesAll):
    """The first write takes 0.6 s whatever happens (a slow disk): the stream fills."""

    def __init__(self) -> None:
        self.rows = 0
        self.first = True

    async def write(self, records: Sequence[FileRecord]) -> None:
        if self.first:
            self.first = False
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.6)
        self.rows += len(records)


class HungOnClose(_TakesAll):
    """Takes every write; its close never ends."""

    async def aclose(self) -> None:
        await anyio.sleep_forever()


class FailsToClose(_TakesAll):
    """Takes every write; its close fails as a full disk would."""

    async def aclose(self) -> None:
        raise OSError("disk full")


class SlowSink(_TakesAll):
    """Each write takes 2 ms (a slow disk: the consumer lags behind the producers), or
    ``pause`` seconds."""

    def __init__(self, pause: float = 0.002) -> None:
        self.rows = 0
        self.pause = pause

    async def write(self, records: Sequence[FileRecord]) -> None:
        await anyio.sleep(self.pause)
        self.rows += len(records)


class FailsAfterAWhile(_TakesAll):
    """Its first write takes a moment, then fails: a disk that fills while rows wait."""

    async def write(self, records: Sequence[FileRecord]) -> None:
        await anyio.sleep(0.05)
        raise OSError("disk full")


class SecondWriteFails(_TakesAll):
    """Its first write is slow, its second fails: rows queue up behind a dying disk."""

    def __init__(self) -> None:
        self.calls = 0

    async def write(self, records: Sequence[FileRecord]) -> None:
        self.calls += 1
        if self.calls == 1:
            await anyio.sleep(0.2)
        elif self.calls == 2:
            raise OSError("disk full")
