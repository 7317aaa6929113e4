"""``BatchMetrics``: the async collector. The only module that starts tasks.

Producers check their arguments, build an immutable event tuple and
``send_nowait`` it into a bounded memory-object stream (awaiting ``send`` only
when the buffer is full: backpressure). One consumer task drains the stream in
batches with ``receive_nowait`` and folds each batch into the :class:`Aggregate`,
the per-file table and the sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import logging
import math
import os
import stat
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from itertools import chain
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    NamedTuple,
    ParamSpec,
    Self,
    TypeGuard,
    TypeVar,
    cast,
    overload,
)

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._aggregate import Aggregate
from ._blocking import FILE_EXECUTOR
from ._events import (
    COUNT_LIMIT,
    ERROR,
    FIRST_STAMP,
    SKIPPED,
    STAMPS_END,
    Columns,
    Event,
    FileRecord,
    absolute,
    check_bool,
    check_count,
    check_duration,
    check_fields,
    check_filename,
    check_optional_count,
    check_optional_str,
    check_path,
    check_status,
)
from ._export import replaced_mode, write_csv, write_json, write_text_atomic
from ._files import FileTable
from ._render import file_row_dict, json_text
from ._sinks import Sink, _FileSink, check_sink
from ._summary import BatchMetricsSummary
from ._threads import InboxClosed, ThreadInbox
from ._window import RateWindow, estimate_eta

if TYPE_CHECKING:
    from ._store import Store

logger = logging.getLogger("batchmetrics")

_INF = math.inf
#: Seconds the exit still gives the summary file and the store after its deadline.
_GRACE = 2.0
_CHUNK = 256
_PUMP_PERIOD = 0.002  # seconds between pump passes while threads record
_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


class BatchState(enum.Enum):
    """Where a batch is in its life."""

    NEW = "new"
    RUNNING = "running"
    FINISHING = "finishing"
    FINISHED = "finished"


class _Marker:
    """A barrier sent through the stream by ``snapshot()``; set once all before it is folded."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = anyio.Event()


class BatchMetrics:
    """Collect per-file metrics of an async batch job.

    Use it as an async context manager: entering starts the consumer task and
    stamps the start time; leaving drains every recorded event, stamps the end
    time and makes ``summary()`` final. Record with ``record_file``,
    ``record_error``, ``record_skip``, ``track()`` or ``@timed``; from worker
    threads with ``record_file_threadsafe`` and friends.

    Args:
        batch_id: identifies the batch; a UUID4 by default.
        keep_files: keep per-file rows (compactly) for ``get_file_metrics()`` and the
            exports. ``False`` keeps only the aggregate: memory stays constant.
        buffer_size: how many events may wait for the consumer; when that many wait,
            producers wait too (backpressure).
        total_files: the number of files expected, for progress and ETA.
        sinks: receive every per-file row as it is aggregated (see ``JsonlSink``).
        summary_path: a JSON file rewritten atomically every ``interval`` with the summary.
        interval: seconds between sink flushes, summary-file writes, store checkpoints
            and display updates.
        store: a history ``Store`` or the path of its SQLite file: the run is recorded
            at start, checkpointed every ``interval`` and finished at exit.
        store_files: also write per-file rows to the store.
        display: show live progress on the terminal (``rich`` if installed, else a log line).
        rate_window: seconds of the sliding window for recent rates and the ETA.
        slowest: how many of the slowest files the summary lists.
        max_error_types: how many error types the summary counts and keeps messages
            of; errors of later types are counted in ``errors.other_types``.
        shutdown_timeout: the longest the exit may take to drain and finish its outputs;
            past it the exit raises ``TimeoutError`` and the batch is ``failed``, after
            a short grace for the sinks, the summary file and the store (2 s each at most).
        clock: function giving the time in seconds since the epoch; inject one in tests.
            By default, the wall clock at the start advanced by the monotonic clock:
            a step of the system clock mid-run (NTP, a manual change) moves no stamp
            back and makes no duration or rate negative.
    """

    def __init__(
        self,
        batch_id: str | None = None,
        *,
        keep_files: bool = True,
        buffer_size: int = 4096,
        total_files: int | None = None,
        sinks: Sequence[Sink] = (),
        summary_path: str | os.PathLike[str] | None = None,
        interval: float = 1.0,
        store: Store | str | os.PathLike[str] | None = None,
        store_files: bool = False,
        display: bool = False,
        rate_window: float = 10.0,
        slowest: int = 10,
        max_error_types: int = 100,
        shutdown_timeout: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if batch_id is None:
            batch_id = str(uuid.uuid4())
        if not isinstance(batch_id, str):
            raise TypeError(f"batch_id must be a str or None, got {type(batch_id).__name__} "
                            f"{batch_id!r}")
        if not batch_id:
            raise ValueError("batch_id must not be empty")
        try:
            batch_id.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no history, file or terminal takes it
            raise ValueError(f"batch_id must be valid text, got {batch_id!r}") from None
        batch_id = str.__str__(batch_id)  # a str subclass (numpy.str_): plain
        check_bool(keep_files, "keep_files")
        check_bool(store_files, "store_files")
        check_bool(display, "display")
        if summary_path is not None:
            summary_path = absolute(check_path(summary_path, "summary_path"))
        if store is not None:
            from ._store import Store  # aiosqlite is imported only when a store is used

            if not isinstance(store, Store):
                store = Store(check_path(store, "store"))
        # counts are kept as the plain ints check_count makes (numpy ints are not JSON)
        buffer_size = check_count(buffer_size, "buffer_size")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size!r}")
        if total_files is not None:
            total_files = check_count(total_files, "total_files")
        _check_positive(interval, "interval")
        if _check_positive(rate_window, "rate_window") < 0.01:  # its slots must stay countable
            raise ValueError(f"rate_window must be >= 0.01 seconds, got {rate_window!r}")
        _check_positive(shutdown_timeout, "shutdown_timeout")
        slowest = check_count(slowest, "slowest")
        max_error_types = check_count(max_error_types, "max_error_types")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, got {clock!r}")
        if isinstance(sinks, Sink | str | bytes) or not isinstance(sinks, Sequence):
            raise TypeError(f"sinks must be a sequence of sinks, got {sinks!r}")
        self._sinks = [check_sink(s) for s in sinks]
        if len({id(s) for s in self._sinks}) < len(self._sinks):
            raise ValueError(f"sinks must be distinct: each would get every row once per "
                             f"listing, got {sinks!r}")
        _check_distinct_files(_output_files(summary_path, self._sinks) + _history_file(store),
                              _same_path)
        self.batch_id = batch_id
        self.keep_files = keep_files
        self.total_files = total_files
        self._buffer_size = buffer_size
        self._interval = float(interval)
        self._shutdown_timeout = float(shutdown_timeout)
        # Stamps are self._clock() + self._clock_offset. By default, the monotonic clock
        # plus the wall time at which it read 0 (set at the start): the wall clock, but
        # never stepped (NTP, a manual change), so no duration or rate goes negative.
        self._steady = clock is None
        self._clock: Callable[[], float] = time.monotonic if clock is None else clock
        self._clock_offset = 0.0
        self._summary_path = summary_path
        #: The last failure of each periodic output, while it keeps failing.
        self._tick_errors: dict[str, str] = {}
        self._display = display
        self._store_arg = store
        self._store: Store | None = None
        self._store_files = store_files
        self._agg = Aggregate(slowest_k=slowest, max_error_types=max_error_types)
        self._files: FileTable | None = FileTable() if keep_files else None
        self._window = RateWindow(rate_window)
        self._state = BatchState.NEW
        self._entered = False
        self._outcome = "running"
        self._send: MemoryObjectSendStream[Any] | None = None
        # The open chunk: a list already on the stream that producers append to
        # until the consumer takes it (see record_file).
        self._chunk: list[Event] | None = None
        self._room: anyio.Event | None = None  # set when the consumer drains; see _send_when_room
        self._recv: MemoryObjectReceiveStream[Any] | None = None
        self._tg: TaskGroup | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._consumer_done = anyio.Event()
        self._drained = False
        self._uncounted = 0  # events still buffered when the consumer failed
        self._consumer_scope: anyio.CancelScope | None = None
        self._pump_scope: anyio.CancelScope | None = None
        self._exit_deadline: float | None = None  # set when the exit starts; see __aexit__
        self._consumer_error: BaseException | None = None
        self._start_error: BaseException | None = None
        self._started = anyio.Event()
        self._finished = anyio.Event()
        self._markers: set[_Marker] = set()
        self._in_flight = 0
        self._final: BatchMetricsSummary | None = None
        self._inbox = ThreadInbox(buffer_size)
        self._inbox_used = anyio.Event()
        self._pump_lock = anyio.Lock()
        self._outputs_lock = anyio.Lock()  # the ticker's round, or the exit's final outputs
        self._ticker_scope: anyio.CancelScope | None = None
        self._thread_lock = threading.Lock()
        self._in_flight_threads = 0
        self._loop_thread = -1
        self._accepts_raw = [getattr(s, "accepts_raw_events", False) for s in self._sinks]

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def state(self) -> BatchState:
        return self._state

    def _require_asyncio(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # trio, say: asyncio's own calls would fail obscurely later
            raise RuntimeError(
                f"batch {self.batch_id!r}: batchmetrics runs on asyncio (asyncio.run, or "
                "anyio.run with its default asyncio backend), and no asyncio event loop "
                "runs here") from None

    async def __aenter__(self) -> Self:
        self._require_asyncio()
        if self._entered:
            raise RuntimeError(
                f"batch {self.batch_id!r} was already entered; a BatchMetrics runs once, "
                "create a new one"
            )
        self._entered = True  # the state stays NEW until the start is done
        send, recv = anyio.create_memory_object_stream[Any](
            max(1, self._buffer_size // _CHUNK))
        self._recv = recv
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._send_for_pump = send
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            if self._steady:
                self._clock_offset = _wall_offset()
            first = self._clock()
            self._agg.start_ts = _check_clock(first, self._clock_offset)
            if first.__class__ is not float:  # an int or numpy clock: stamps are plain floats
                self._clock = functools.partial(_float_reading, self._clock)
            self._window.begin(self._agg.start_ts)
            await self._check_outputs()
            if self._store_arg is not None:
                self._store = self._store_arg
                await self._store.begin(self)
                # the batch starts now: waiting for another process to let go of the
                # history (up to busy_timeout) is not time the batch ran (the stored
                # start follows at the first checkpoint)
                self._agg.start_ts = max(self._agg.start_ts,
                                         self._clock() + self._clock_offset)
                self._window.begin(self._agg.start_ts)
            tg.start_soon(self._consume, name=f"batchmetrics consumer {self.batch_id}")
            tg.start_soon(self._pump, name=f"batchmetrics thread pump {self.batch_id}")
            if self._needs_ticker():
                tg.start_soon(self._tick, name=f"batchmetrics ticker {self.batch_id}")
        except BaseException as exc:
            # the error is re-raised as it is: passing it to the task group would wrap it
            self._start_error = exc
            self._outcome = "failed"  # what summary().state and live() report from now on
            tg.cancel_scope.cancel()
            send.close()
            recv.close()
            await tg.__aexit__(None, None, None)
            self._state = BatchState.FINISHED
            self._started.set()  # release live() iterators waiting for a start
            self._finished.set()
            raise
        self._send = send
        self._state = BatchState.RUNNING
        self._started.set()
        logger.info("Batch metrics collection started", extra={"batch_id": self.batch_id})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        send, tg = self._send, self._tg
        assert send is not None
        assert tg is not None
        self._send = None
        self._chunk = None
        self._state = BatchState.FINISHING
        self._exit_deadline = anyio.current_time() + self._shutdown_timeout
        if exc is None:
            self._outcome = "finished"
        elif isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt
                        | GeneratorExit):  # the last: an async generator closed early
            self._outcome = "cancelled"
        else:
            self._outcome = "failed"
        problem: BaseException | None = None
        failure: BaseException | None = None
        interruptions: list[BaseException] = []  # asyncio's own cancellations, see below
        with anyio.CancelScope(shield=True):
            try:
                problem = await _to_its_end(self._finish(send), interruptions)
            except BaseException as exc_of_exit:
                # A failure of the exit itself (a user's clock that raises, a bug): the
                # batch's tasks and the store's thread must still end, or the process
                # would never exit.
                failure = exc_of_exit
                self._stop_pump()
                if self._consumer_scope is not None:
                    self._consumer_scope.cancel()
                if self._store is not None:
                    await self._store.release(self)
        interrupted = interruptions[0] if interruptions else None
        # The tasks end (the consumer is done unless timed out); a cancellation of the
        # body's scope is raised as the task group exits: it waits for the report below.
        tg.cancel_scope.shield = True
        tg.cancel_scope.cancel()
        cancelled: BaseException | None = None
        try:
            await tg.__aexit__(None, None, None)
        except anyio.get_cancelled_exc_class() as exc_of_group:
            cancelled = exc_of_group
        if failure is not None:
            self._state = BatchState.FINISHED
            self._finished.set()
            if interrupted is not None:  # the cancellation goes on; the failure is said
                logger.error("batchmetrics: leaving batch %r failed", self.batch_id,
                             exc_info=failure)
                interrupted.__context__ = failure
                raise interrupted
            raise failure
        if self._agg.end_ts is None:
            self._agg.end_ts = self._now()
        self._state = BatchState.FINISHED
        self._finished.set()
        for marker in self._markers:
            marker.event.set()
        summary = self.summary()
        logger.info(
            "Batch metrics collection finished",
            extra={
                "batch_id": self.batch_id,
                "total_files": summary.total_files,
                "processed": summary.processed_count,
                "errors": summary.error_count,
                "duration": summary.timing.total_duration,
            },
        )
        if isinstance(self._consumer_error, KeyboardInterrupt | SystemExit):
            raise self._consumer_error  # a sink's interrupt or exit goes on as it is
        if self._consumer_error is not None:
            lost = (f"; {self._uncounted} events recorded before that were never counted"
                    if self._uncounted else "")
            error = RuntimeError(f"the consumer of batch {self.batch_id!r} failed: "
                                 f"{_describe(self._consumer_error)}{lost}")
            error.__cause__ = self._consumer_error
            if isinstance(problem, TimeoutError):  # the timeout stays what is raised
                problem.add_note(f"batchmetrics: also, {error}")
            else:
                if problem is not None:  # a failed output too: said, not dropped
                    error.add_note(f"batchmetrics: also, {problem!r}")
                    logger.error("batchmetrics: batch %r: also, %s", self.batch_id, problem)
                problem = error
        if cancelled is None:
            cancelled = interrupted
        going_on = exc if exc is not None else cancelled  # raised whatever happened here
        if problem is not None:
            if going_on is None:
                raise problem
            # A cancellation is often swallowed by its scope, note and all: the problem
            # (events lost, say) is logged too.
            going_on.add_note(f"batchmetrics: while finishing batch {self.batch_id!r}: "
                              f"{problem!r}")
            logger.error("batchmetrics: while finishing batch %r (%s): %s", self.batch_id,
                         type(going_on).__name__, problem)
        if cancelled is not None and exc is None:
            raise cancelled
        if interrupted is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            # asyncio cancelled this task during the exit, after the body raised: the
            # cancellation goes on (asyncio.timeout and TaskGroup rely on it), the
            # body's error as its context
            interrupted.__context__ = exc
            raise interrupted

    async def _finish(self, send: MemoryObjectSendStream[Any]) -> BaseException | None:
        """Drain, then write the final outputs, within ``shutdown_timeout``; what went wrong."""
        problem: BaseException | None = None
        assert self._exit_deadline is not None
        with anyio.CancelScope(deadline=self._exit_deadline) as scope:
            self._inbox.close()
            await self._pump_once()  # what threads recorded before the exit
            self._stop_pump()
            send.close()
            await self._consumer_done.wait()
            self._agg.end_ts = self._now()
            if self._consumer_error is not None and self._outcome == "finished":
                self._outcome = "failed"  # rows it had not handed to the sinks are lost
            # A periodic write in progress ends first, and none starts after (the
            # state is no longer RUNNING): the last write is the final summary's.
            async with self._outputs_lock:
                final, problem = await self._finish_outputs()
            # Final only now: had the outputs run past the deadline, it would say failed.
            self._final = final
            self._state = BatchState.FINISHED
            self._finished.set()
        if scope.cancelled_caught:
            self._stop_pump()
            if self._consumer_scope is not None:
                self._consumer_scope.cancel()
            if self._consumer_done.is_set():
                what = "finished draining but not writing its outputs"
            elif self._drained:
                what = "finished draining but its sinks did not close"
            else:
                what = "did not finish draining"
            problem = TimeoutError(
                f"batch {self.batch_id!r} {what} within {self._shutdown_timeout} s")
            await self._finish_after_timeout()
        return problem

    async def _check_outputs(self) -> None:
        """Check the paths of the summary file and of our file sinks: one every write
        to would fail fails the start, naming the file. Nothing is created or
        truncated (a start that fails later leaves every file as it was). Within
        ``shutdown_timeout``: a hung disk cannot hold the start for ever."""
        for sink in self._sinks:
            if isinstance(sink, _FileSink) and sink.closed:
                raise RuntimeError(f"{sink!r} is closed: a sink serves one batch, "
                                   "make a new one")
        files = _output_files(self._summary_path, self._sinks)
        run = asyncio.get_running_loop().run_in_executor
        with anyio.move_on_after(self._shutdown_timeout) as scope:
            for out in files:  # the history checks its own file as it opens it
                problem = await run(FILE_EXECUTOR, _unwritable, out.path, out.replaced)
                if problem:
                    raise ValueError(f"cannot write {out.what} {out.path!r}: {problem}")
            files += _history_file(self._store_arg)
            if len(files) > 1:  # links and hard links can make two paths one file
                await run(FILE_EXECUTOR, _check_distinct_files, files, _same_file)
        if scope.cancelled_caught:
            raise TimeoutError(
                f"batch {self.batch_id!r}: its output paths could not be checked within "
                f"{self._shutdown_timeout} s (shutdown_timeout): a hung disk?")

    def _needs_ticker(self) -> bool:
        return bool(self._summary_path or self._display or self._store is not None)

    async def _finish_outputs(self) -> tuple[BatchMetricsSummary, BaseException | None]:
        """Final summary file, store row and display; the final summary, and the first
        failure. A failure makes a finished batch failed (the exit raises it), and
        what was already written says so too."""
        final = self._make_summary(final=True)
        problem: BaseException | None = None
        written_to = None
        if self._summary_path is not None:
            try:
                await write_text_atomic(self._summary_path, json_text(final.to_dict()))
                written_to = self._summary_path
            except Exception as exc:
                problem = exc
                final = self._failed_final(final)
        if self._store is not None:
            try:
                await self._store.finish(self, final, self._outcome)
            except Exception as exc:
                problem = problem or exc
                failed = self._failed_final(final)
                if written_to is not None and failed is not final:  # it said finished
                    with contextlib.suppress(Exception):
                        await write_text_atomic(written_to, json_text(failed.to_dict()))
                final = failed
        self._close_display(final)
        return final, problem

    def _failed_final(self, final: BatchMetricsSummary) -> BatchMetricsSummary:
        """The final summary of a batch whose outputs failed: ``failed`` if it had finished."""
        if self._outcome != "finished":
            return final
        self._outcome = "failed"
        return self._make_summary(final=True)

    async def _finish_after_timeout(self) -> None:
        """After the exit's deadline: the summary file and the store row, as far as
        they get in a short grace period, and the store's connection closed in any case
        (its thread would keep the process alive)."""
        if self._outcome != "cancelled":
            self._outcome = "failed"  # the exit raises: the summary, file and store say so
        if self._agg.end_ts is None:
            self._agg.end_ts = self._now()
        self._state = BatchState.FINISHED
        final = self._final = self._make_summary()
        if self._ticker_scope is not None:  # a periodic write may hang like the outputs
            self._ticker_scope.cancel()
        with anyio.move_on_after(_GRACE):
            if self._summary_path is not None:
                async with self._outputs_lock:
                    with contextlib.suppress(Exception):
                        await write_text_atomic(self._summary_path, json_text(final.to_dict()))
        if self._store is not None:
            try:
                await self._store.abandon(self, final, self._outcome, grace=_GRACE)
            except Exception:
                logger.warning("batchmetrics: the store of batch %r could not record its "
                               "end after the timeout", self.batch_id, exc_info=True)
        self._close_display(final)
        self._finished.set()  # readers wake once the outputs are as final as they get

    def _close_display(self, final: BatchMetricsSummary) -> None:
        if self._display_obj is not None:
            display, self._display_obj = self._display_obj, None
            try:
                display.close(final)
            except Exception:
                logger.warning("batchmetrics: closing the display of batch %r failed",
                               self.batch_id, exc_info=True)

    _display_obj: Any = None

    # -- the consumer -------------------------------------------------------------------

    async def _consume(self) -> None:
        """Drain the stream into the aggregate, the file table and the sinks, until it ends.

        Shielded: cancelling the batch body must not stop the consumer, which ends
        when the stream is closed and drained (``__aexit__``), or when the exit's
        deadline cancels ``_consumer_scope``.
        """
        with anyio.CancelScope(shield=True) as scope:
            self._consumer_scope = scope
            try:
                await self._consume_stream()
                self._drained = True  # every event is folded; the sinks close next
            except anyio.get_cancelled_exc_class() as exc:
                if not scope.cancel_called:  # asyncio's own, in the middle of a fold
                    self._consumer_error = exc  # the exit says how many events were lost
                    logger.error("batchmetrics consumer of batch %r was cancelled",
                                 self.batch_id)
                    raise
                # the exit's deadline stopped it: reported as the exit's TimeoutError
            except BaseException as exc:
                self._consumer_error = exc
                logger.error("batchmetrics consumer of batch %r failed", self.batch_id,
                             exc_info=True)
            finally:
                # Nothing may be added for it any more: the open chunk is no longer on a
                # stream it reads, and threads must not wait for a pump it no longer feeds.
                self._chunk = None
                self._inbox.close()
                if self._consumer_error is not None:  # what threads put and no pump took
                    self._uncounted += len(self._inbox)
                try:
                    await self._close_sinks()
                finally:  # also when asyncio cancels the close: the exit must not wait on
                    self._consumer_done.set()
                    if self._room is not None:  # producers waiting for room learn it ended
                        self._room.set()
                    for marker in self._markers:
                        marker.event.set()

    async def _consume_stream(self) -> None:
        recv = self._recv
        assert recv is not None
        try:
            await self._consume_items(recv)
        except BaseException:
            # lost: the exit's error says how many (unless its deadline cut the drain)
            self._uncounted += _count_buffered(recv)
            raise
        finally:
            recv.close()

    async def _consume_items(self, recv: MemoryObjectReceiveStream[Any]) -> None:
        receive_nowait = recv.receive_nowait
        flush_every = self._interval if self._sinks else _INF
        next_flush = anyio.current_time() + flush_every
        while True:
            try:
                if flush_every == _INF:
                    item = await recv.receive()
                else:
                    # what is already there first: a receive cut off by a flush
                    # deadline that has passed (an interval shorter than a round)
                    # would otherwise never get an item
                    try:
                        item = receive_nowait()
                    except WouldBlock:
                        item = None
                        with anyio.move_on_after(max(next_flush - anyio.current_time(),
                                                     0)):
                            item = await recv.receive()
                    if item is None:
                        await self._flush_sinks()
                        next_flush = anyio.current_time() + flush_every
                        continue
            except EndOfStream:
                break
            except anyio.get_cancelled_exc_class():
                if not self._outlasts_cancellation():
                    raise
                continue
            items = [item]
            append = items.append
            try:
                while True:
                    append(receive_nowait())
            except (WouldBlock, EndOfStream):
                pass
            self._chunk = None  # the open chunk is among the items: close it
            if self._room is not None:  # wake producers waiting for room
                self._room.set()
                self._room = None
            if self._markers:
                await self._fold_with_markers(items)
            else:
                await self._fold(item if len(items) == 1 else
                                 list(chain.from_iterable(items)))
            del items, append, item  # hold no events while waiting for more
            if anyio.current_time() >= next_flush:
                await self._flush_sinks()
                next_flush = anyio.current_time() + flush_every

    async def _fold(self, batch: list[Event]) -> None:
        columns = Columns(batch)
        counts = self._agg.add_batch(batch, columns)
        if self._files is not None:
            self._files.extend(batch, columns)
        self._window.add_batch(batch, counts)
        # Every sink and the store get the rows the aggregate now counts, also when one
        # of them fails; then the first failure ends the consumer.
        failure: Exception | None = None
        if self._sinks:
            records: list[FileRecord] | None = None
            for i, (sink, raw) in enumerate(zip(self._sinks, self._accepts_raw, strict=True)):
                try:
                    if raw:
                        await sink.write(batch)  # type: ignore[arg-type]  # same layout
                    else:
                        if records is None:
                            records = [FileRecord._make(ev) for ev in batch]
                        await sink.write(records)
                except Exception as exc:
                    failure = self._first_failure(failure, exc, sink)
                except anyio.get_cancelled_exc_class():
                    if not self._cut_short(sink):
                        self._queue_on_the_rest(batch, self._sinks[i + 1:])
                        raise
                except (KeyboardInterrupt, SystemExit):  # a second Ctrl-C, an exit()
                    self._queue_on_the_rest(batch, self._sinks[i + 1:])
                    raise
        if self._store is not None and self._store_files:
            try:
                await self._store.write_files(self, batch)
            except Exception as exc:
                failure = self._first_failure(failure, exc, self._store)
            except anyio.get_cancelled_exc_class():
                if not self._cut_short(self._store):
                    raise
        if failure is not None:
            raise failure

    def _queue_on_the_rest(self, batch: list[Event], sinks: Sequence[Sink]) -> None:
        """A fold cancelled (or interrupted: Ctrl-C, ``exit()``) in a sink's write: the
        outputs after it that can take rows without waiting (our file sinks, the store)
        get them, as the aggregate counts them; each is written by the output's next
        write or its close."""
        missed: list[object] = []
        for sink in sinks:
            try:
                if isinstance(sink, _FileSink) and not sink.closed:
                    sink.take(batch)
                    continue
            except Exception:  # the cancellation is what the consumer raises
                logger.exception("batchmetrics: %r could not take rows of batch %r", sink,
                                 self.batch_id)
            missed.append(sink)
        if self._store is not None and self._store_files \
                and not self._store.queue_files(self, batch):
            missed.append(self._store)
        for where in missed:
            logger.warning("batchmetrics: %r missed %d rows of batch %r: the consumer was "
                           "interrupted before it wrote them", where, len(batch), self.batch_id)

    def _outlasts_cancellation(self) -> bool:
        """Whether the consumer goes on through the cancellation being raised: asyncio's
        own (which passes anyio's shield: the sweep of the tasks left as asyncio.run
        ends) once the exit has begun, which ends the stream within its deadline. Not
        the exit's deadline (anyio's, on the consumer's scope), and not before the exit,
        which may never come (a batch left open as asyncio.run ends)."""
        scope = self._consumer_scope
        return scope is not None and not scope.cancel_called and self._exit_deadline is not None

    def _cut_short(self, where: object) -> bool:
        """Whether a write cancelled in the fold goes on to the outputs after it, which
        still get the batch's rows (see ``_outlasts_cancellation``)."""
        if not self._outlasts_cancellation():
            return False
        logger.warning("batchmetrics: a write to %r of batch %r was cancelled by asyncio; "
                       "our sinks and the store queue rows before they wait", where,
                       self.batch_id)
        return True

    def _first_failure(self, first: Exception | None, exc: Exception,
                       where: object) -> Exception:
        """The failure to raise: the first one; any later one is logged."""
        if first is None:
            return exc
        logger.error("batchmetrics: %r of batch %r failed too", where, self.batch_id,
                     exc_info=exc)
        return first

    async def _fold_with_markers(self, items: list[Any]) -> None:
        events: list[Event] = []
        for i, item in enumerate(items):
            if item.__class__ is list:
                events += item
            else:
                if events:
                    try:
                        await self._fold(events)
                    except Exception:  # the events after this marker are lost: count them
                        self._uncounted += _events_in(items[i:])
                        raise
                    events = []
                item.event.set()
                self._markers.discard(item)
        if events:
            await self._fold(events)

    async def _flush_sinks(self) -> None:
        failure: Exception | None = None
        for sink in self._sinks:  # each one, also after another failed; then the first error
            try:
                await sink.flush()
            except Exception as exc:
                failure = self._first_failure(failure, exc, sink)
        if failure is not None:
            raise failure

    async def _close_sinks(self) -> None:
        """Flush and close every sink, also after a failure; the first error is kept."""
        deadline = self._exit_deadline
        if deadline is None:  # the consumer failed while the batch ran
            deadline = anyio.current_time() + self._shutdown_timeout
        for sink in self._sinks:  # a scope each: one cut off at the deadline stops no other
            # those reached after the deadline share the grace that follows it
            limit = deadline if anyio.current_time() < deadline else deadline + _GRACE
            with anyio.CancelScope(shield=True, deadline=limit):
                try:
                    await sink.aclose()
                except (Exception, KeyboardInterrupt, SystemExit) as exc:
                    # the other sinks still close; an interrupt is raised by the exit
                    logger.error("batchmetrics: closing sink %r of batch %r failed", sink,
                                 self.batch_id, exc_info=True)
                    if self._consumer_error is None or isinstance(
                            exc, KeyboardInterrupt | SystemExit):
                        self._consumer_error = exc

    # -- the periodic ticker ------------------------------------------------------------

    async def _tick(self) -> None:
        """Every interval while running: summary file, store checkpoint, display.

        Each round holds ``_outputs_lock``, which the exit takes for the final
        outputs: a periodic write never lands after the final one.
        """
        if self._display:
            from ._display import make_display

            self._display_obj = make_display(self)
        with anyio.CancelScope() as self._ticker_scope:
            while True:
                await anyio.sleep(self._interval)
                async with self._outputs_lock:
                    if self._state is not BatchState.RUNNING:
                        return
                    await self._tick_once()

    async def _tick_once(self) -> None:
        summary = self.summary()
        # apart: a summary file that cannot be written must not stop the checkpoints
        # (the run would look interrupted to `batchmetrics list` while it goes on)
        if self._summary_path is not None:
            path = self._summary_path
            await self._periodic("summary file", lambda: write_text_atomic(
                path, json_text(summary.to_dict())))
        if self._store is not None:
            store = self._store
            await self._periodic("history checkpoint", lambda: store.checkpoint(self))
        if self._display_obj is not None:
            try:
                self._display_obj.update(summary)
            except Exception:
                logger.warning("batchmetrics: the display of batch %r failed; it is off "
                               "from now on", self.batch_id, exc_info=True)
                self._close_display(summary)

    async def _periodic(self, what: str, write: Callable[[], Awaitable[None]]) -> None:
        """Run one periodic write; a failure is logged, with its traceback when it is
        new (not of the kind the last round of this output logged: a full disk would
        log the same traceback every interval), and the output is tried again next
        round."""
        try:
            await write()
        except Exception as exc:
            # the kind of failure: its text may name a fresh temp file each round
            cause = exc.__cause__
            text = f"{type(exc).__name__} {getattr(exc, 'errno', None)} " \
                f"{type(cause).__name__} {getattr(cause, 'errno', None)}"
            repeated = self._tick_errors.get(what) == text
            self._tick_errors[what] = text
            logger.warning("batchmetrics: the periodic %s of batch %r failed%s", what,
                           self.batch_id, " again" if repeated else "",
                           exc_info=None if repeated else True)
        else:
            if self._tick_errors.pop(what, None) is not None:
                logger.warning("batchmetrics: the periodic %s of batch %r works again",
                               what, self.batch_id)

    # -- recording ----------------------------------------------------------------------

    def _not_running(self) -> RuntimeError:
        if not self._entered:
            why = "it has not started: enter `async with metrics:` first"
        elif self._state is BatchState.NEW:
            why = "it is still starting: record inside the `async with metrics:` block"
        elif self._start_error is not None:
            why = f"it failed to start: {self._start_error!r}"
        elif self._consumer_error is not None:
            why = f"its consumer failed: {_describe(self._consumer_error)}"
        elif self._state is BatchState.FINISHING:
            why = "it is finishing"
        else:
            why = "it has finished"
        return RuntimeError(f"cannot record into batch {self.batch_id!r}: {why}")

    async def record_file(
        self,
        filename: str | os.PathLike[str],
        *,
        duration: float,
        samples: int = 0,
        measurements: int = 0,
        bytes_processed: int = 0,
        status: str = "success",
        error_type: str | None = None,
        error_message: str | None = None,
        memory_peak: int | None = None,
    ) -> None:
        """Record one file's outcome.

        Returns once the event is in the buffer (waiting only when it is full);
        every call that returned is in the next ``snapshot()`` and in the final
        summary. Bad arguments raise ``TypeError``/``ValueError`` and record nothing.
        """
        # The common case is checked inline (no call); anything unusual goes through
        # check_fields, which converts what it can and names what it cannot.
        if (
            filename.__class__ is not str
            or duration.__class__ is not float
            or samples.__class__ is not int
            or measurements.__class__ is not int
            or bytes_processed.__class__ is not int
            or not filename
            or not 0.0 <= duration <= 1e10  # MAX_SECONDS; NaN fails
            or (not duration and math.copysign(1.0, duration) < 0.0)  # -0.0, made 0.0 there
            # any count < 0 (the OR is then negative) or >= 2**128 (COUNT_LIMIT)
            or (samples | measurements | bytes_processed) >> 128
            or (error_type is not None and error_type.__class__ is not str)
            or (error_message is not None and error_message.__class__ is not str)
            or (memory_peak is not None
                and (memory_peak.__class__ is not int or memory_peak >> 128))
        ):
            (filename, duration, samples, measurements, bytes_processed, error_type,
             error_message, memory_peak) = check_fields(
                filename, duration, samples, measurements, bytes_processed, error_type,
                error_message, memory_peak)
        code = 0 if status == "success" else check_status(status)
        ev = (filename, self._clock() + self._clock_offset, duration, samples, measurements,
              bytes_processed, code, error_type, error_message, memory_peak)
        # An open chunk exists only while the batch runs (it is dropped before the exit).
        chunk = self._chunk
        if chunk is not None and len(chunk) < 256:  # _CHUNK, as a constant: the hot path
            chunk.append(ev)
            return
        await self._send_chunk(ev)

    async def _send_chunk(self, ev: Event) -> None:
        """Put a new chunk holding ``ev`` on the stream; it stays open for appends.

        Events travel in chunks (lists of up to 256 events) so the stream's
        per-item cost is paid once a chunk, not once an event. A chunk sent
        without waiting is in the buffer (or handed to the waiting consumer), so
        producers may append to it until the consumer takes it: the consumer
        closes the open chunk (``self._chunk = None``) when it drains the stream,
        before reading it. A chunk that had to wait for room is never left open.
        """
        send = self._send
        if send is None:
            raise self._not_running()
        if threading.get_ident() != self._loop_thread:  # once a chunk: not on every call
            raise RuntimeError(
                f"batch {self.batch_id!r}: recorded from a thread other than the event "
                "loop's that runs the batch (the stream is bound to that loop); from a "
                "thread, use record_file_threadsafe() and friends or track_threadsafe()"
            )
        chunk = [ev]
        try:
            send.send_nowait(chunk)
        except WouldBlock:
            await self._send_when_room(send, ev)
        except (BrokenResourceError, ClosedResourceError):
            raise self._not_running() from None
        else:
            self._chunk = chunk

    async def _send_when_room(self, send: MemoryObjectSendStream[Any], ev: Event) -> None:
        """Wait until the consumer has made room, then add ``ev`` without waiting again.

        Not ``await send.send(...)``: a send cancelled just after the consumer took
        its item raises yet has delivered it. Waiting for room, then appending to
        the open chunk or sending a new one with ``send_nowait``, means a cancelled
        call has recorded nothing.
        """
        while True:
            await self._wait_for_room()
            # The room event wakes every waiting producer at once: a cancellation that
            # finds their wake-up already done must still be honoured here.
            await anyio.lowlevel.checkpoint_if_cancelled()
            chunk = self._chunk
            if chunk is not None and len(chunk) < _CHUNK:
                chunk.append(ev)  # another producer opened a chunk since: join it
                return
            chunk = [ev]
            try:
                send.send_nowait(chunk)
            except WouldBlock:
                continue  # other producers took the room first
            except (BrokenResourceError, ClosedResourceError):
                raise self._not_running() from None
            self._chunk = chunk
            return

    async def _wait_for_room(self) -> None:
        """Until the consumer next drains the stream (or ends)."""
        room = self._room
        if room is None:
            room = self._room = anyio.Event()
        await room.wait()

    async def record_error(
        self, filename: str | os.PathLike[str], error_type: str, error_message: str | None,
        duration: float = 0.0,
    ) -> None:
        """Record a failed file with its error type (e.g. an exception's class name)."""
        if (
            error_type.__class__ is not str
            or (error_message is not None and error_message.__class__ is not str)
            or filename.__class__ is not str
            or not filename
            or duration.__class__ is not float
            or not 0.0 <= duration <= 1e10  # MAX_SECONDS; NaN fails
            or (not duration and math.copysign(1.0, duration) < 0.0)  # -0.0, made 0.0 there
        ):
            if not isinstance(error_type, str):
                raise TypeError(f"error_type must be a str, got {type(error_type).__name__} "
                                f"{error_type!r}")
            error_type = str.__str__(error_type)  # a str subclass, e.g. numpy.str_: plain
            error_message = check_optional_str(error_message, "error_message")
            filename, duration = check_filename(filename), check_duration(duration)
        ev = (filename, self._clock() + self._clock_offset, duration, 0, 0, 0, ERROR,
              error_type, error_message, None)
        chunk = self._chunk
        if chunk is not None and len(chunk) < _CHUNK:
            chunk.append(ev)
            return
        await self._send_chunk(ev)

    async def record_skip(self, filename: str | os.PathLike[str], reason: str = "") -> None:
        """Record a skipped file; the reason is kept as its ``error_message``."""
        if reason.__class__ is not str or filename.__class__ is not str or not filename:
            if not isinstance(reason, str):
                raise TypeError(f"reason must be a str, got {type(reason).__name__} {reason!r}")
            filename, reason = check_filename(filename), str.__str__(reason)
        ev = (filename, self._clock() + self._clock_offset, 0.0, 0, 0, 0, SKIPPED, None,
              reason, None)
        chunk = self._chunk
        if chunk is not None and len(chunk) < _CHUNK:
            chunk.append(ev)
            return
        await self._send_chunk(ev)

    def track(self, filename: str | os.PathLike[str]) -> Tracked:
        """Time a block as one file: ``async with metrics.track(name) as item:``.

        Set ``item.samples``, ``item.measurements``, ``item.bytes_processed`` or
        ``item.memory_peak`` inside the block, or call ``item.skip(reason)``. An
        exception is recorded as an error (its class name and message) and re-raised;
        a cancelled block records nothing.
        """
        return Tracked(self, check_filename(filename))

    @overload
    def timed(
        self, filename: Callable[_P, Coroutine[Any, Any, _R]]
    ) -> Callable[_P, Coroutine[Any, Any, _R]]: ...

    @overload
    def timed(
        self, filename: Callable[..., str] | None = None
    ) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Awaitable[_R]]]: ...

    def timed(self, filename: Callable[..., Any] | None = None) -> Any:
        """Decorate an async per-file function so each call is recorded as ``track()`` would.

        ``@metrics.timed`` or ``@metrics.timed(filename)``: the file name is
        ``filename(*args, **kwargs)`` when given, else the first parameter's argument,
        passed by position or by name (``str()`` of it; after ``self`` or ``cls`` for a
        method). The wrapped
        function may return an int, taken as its ``samples``.
        """
        if _is_async_function(filename):  # bare @metrics.timed
            return self.timed()(filename)
        if filename is not None and not callable(filename):
            raise TypeError(f"timed: filename must be a function of the call's arguments "
                            f"returning the file name, got {filename!r}")

        def decorate(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
            if not callable(fn):  # bare @metrics.timed over a plain def took it as filename=
                raise TypeError(f"@timed decorates an async function (async def), got "
                                f"{type(fn).__name__} {fn!r}")
            at, keyword, default = _file_argument(fn)

            @functools.wraps(fn)
            async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                if filename is not None:
                    name = filename(*args, **kwargs)
                elif len(args) > at:
                    name = _file_name(args[at])
                elif keyword is not None and keyword in kwargs:
                    name = _file_name(kwargs[keyword])
                elif default is not inspect.Parameter.empty:
                    name = _file_name(default)
                else:
                    what = getattr(fn, "__qualname__", fn)
                    raise TypeError(f"@timed {what}: no file name: pass the file as the "
                                    "first argument or give filename=")
                async with self.track(name) as item:
                    result = await fn(*args, **kwargs)
                    if (isinstance(result, int) and not isinstance(result, bool)
                            and 0 <= result < COUNT_LIMIT):
                        item.samples = result
                    return result
                raise AssertionError("unreachable")  # pragma: no cover

            return wrapper

        return decorate

    # -- recording from threads ----------------------------------------------------------

    def record_file_threadsafe(
        self,
        filename: str | os.PathLike[str],
        *,
        duration: float,
        samples: int = 0,
        measurements: int = 0,
        bytes_processed: int = 0,
        status: str = "success",
        error_type: str | None = None,
        error_message: str | None = None,
        memory_peak: int | None = None,
    ) -> None:
        """``record_file`` for worker threads (``ThreadPoolExecutor``, ``anyio.to_thread``).

        Checks the arguments in the calling thread (bad ones raise there) and hands
        the event to the loop through a bounded inbox: under backpressure it blocks
        the calling thread, never the event loop. Must not be called on the loop's
        own thread (``await record_file`` there).
        """
        self._check_off_loop("record_file")
        self._record_from_thread(filename, duration, samples, measurements, bytes_processed,
                                 status, error_type, error_message, memory_peak)

    def _record_from_thread(
        self, filename: str | os.PathLike[str], duration: float, samples: int,
        measurements: int, bytes_processed: int, status: str, error_type: str | None,
        error_message: str | None, memory_peak: int | None,
    ) -> None:
        """The ``*_threadsafe`` calls once off the loop's thread is checked: the fields,
        then the event through the inbox."""
        (filename, duration, samples, measurements, bytes_processed, error_type,
         error_message, memory_peak) = check_fields(
            filename, duration, samples, measurements, bytes_processed, error_type,
            error_message, memory_peak)
        code = check_status(status)
        self._put_from_thread((filename, self._clock() + self._clock_offset, duration, samples,
                               measurements, bytes_processed, code, error_type, error_message,
                               memory_peak))

    def record_error_threadsafe(
        self, filename: str | os.PathLike[str], error_type: str, error_message: str,
        duration: float = 0.0,
    ) -> None:
        """``record_error`` for worker threads; see ``record_file_threadsafe``."""
        self._check_off_loop("record_error")
        if not isinstance(error_type, str):
            raise TypeError(f"error_type must be a str, got {type(error_type).__name__} "
                            f"{error_type!r}")
        self._record_from_thread(filename, duration, 0, 0, 0, "error", error_type,
                                 error_message, None)

    def record_skip_threadsafe(self, filename: str | os.PathLike[str], reason: str = "") -> None:
        """``record_skip`` for worker threads; see ``record_file_threadsafe``."""
        self._check_off_loop("record_skip")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__} {reason!r}")
        self._record_from_thread(filename, 0.0, 0, 0, 0, "skipped", None, reason, None)

    def track_threadsafe(self, filename: str | os.PathLike[str]) -> TrackedInThread:
        """``track()`` for worker threads: ``with metrics.track_threadsafe(name) as item:``."""
        return TrackedInThread(self, check_filename(filename))

    def _check_off_loop(self, method: str) -> None:
        """Refuse a ``*_threadsafe`` call on the loop's thread, naming the call to use."""
        if threading.get_ident() == self._loop_thread:
            instead = (f"`async with metrics.{method}(...)`" if method == "track"
                       else f"`await metrics.{method}(...)`")
            raise RuntimeError(
                f"batch {self.batch_id!r}: {method}_threadsafe() was called on the event "
                f"loop's thread, where it could block the loop; use {instead}")

    def _put_from_thread(self, ev: Event) -> None:
        if self._state is not BatchState.RUNNING:
            raise self._not_running()
        first = not self._inbox.used
        try:
            self._inbox.put(ev)
        except InboxClosed:
            raise self._not_running() from None
        if first and self._token is not None:
            # wake the pump once; later puts are picked up while it polls
            with contextlib.suppress(anyio.RunFinishedError):
                anyio.from_thread.run_sync(self._inbox_used.set, token=self._token)

    async def _pump(self) -> None:
        """Move events from the thread inbox to the stream while threads record.

        Shielded, as the consumer: cancelling the batch body must not leave a
        thread blocked on a full inbox that nobody empties (the body may be waiting
        for that thread). The exit stops it after its last pump.
        """
        with anyio.CancelScope(shield=True) as scope:
            self._pump_scope = scope
            await self._inbox_used.wait()
            period = _PUMP_PERIOD
            while self._state is BatchState.RUNNING:
                busy = len(self._inbox) > 0
                if not await self._pump_once():
                    return
                # poll often while threads record, less while they are quiet
                period = _PUMP_PERIOD if busy else min(period * 2, 0.05)
                await anyio.sleep(period)

    def _stop_pump(self) -> None:
        self._inbox_used.set()  # a pump not started yet finds the batch finishing, and ends
        if self._pump_scope is not None:
            self._pump_scope.cancel()

    async def _pump_once(self) -> bool:
        """Hand what threads recorded to the stream; ``False`` once it is closed.

        As ``_send_when_room``: waits for room, then sends without waiting, so a
        cancelled pump has taken nothing from the inbox.
        """
        async with self._pump_lock:  # one at a time: a snapshot waits for a pump under way
            send = self._send_for_pump
            inbox = self._inbox
            while len(inbox):
                events = inbox.take(_CHUNK)
                try:
                    send.send_nowait(events)
                except WouldBlock:
                    inbox.put_back(events)
                    await self._wait_for_room()
                    continue
                except (BrokenResourceError, ClosedResourceError):
                    inbox.put_back(events)  # the consumer is gone: the exit reports why
                    return False
                inbox.done(len(events))
            return True

    # -- reading ------------------------------------------------------------------------

    async def snapshot(self) -> BatchMetricsSummary:
        """The summary including every record call that returned before this call."""
        self._require_asyncio()
        send = self._send
        if send is not None:
            await self._pump_once()  # what threads recorded before this call
            self._chunk = None  # the marker goes after it: appends must not pass the marker
            marker = _Marker()
            self._markers.add(marker)
            try:
                try:
                    send.send_nowait(marker)
                except WouldBlock:
                    await send.send(marker)
            except (BrokenResourceError, ClosedResourceError):
                # the exit closed the stream meanwhile: it drains every event first
                self._markers.discard(marker)
                await self._consumer_done.wait()
            except BaseException:  # cancelled: the marker may never reach the consumer
                self._markers.discard(marker)
                raise
            else:
                await marker.event.wait()
            if self._consumer_error is not None:
                raise self._not_running() from self._consumer_error
        elif self._state is BatchState.FINISHING and self._exit_deadline is not None:
            await self._consumer_done.wait()  # the exit is draining (not starting): wait
        return self.summary()

    def _now(self) -> float:
        """The time now, as events are stamped (an injected clock's reading as it is)."""
        return self._clock() + self._clock_offset if self._steady else self._clock()

    def summary(self) -> BatchMetricsSummary:
        """The summary now, in O(1) time; final once the batch has exited.

        While running it covers the events the consumer has folded so far (use
        ``snapshot()`` to include every call that returned).
        """
        if self._final is not None:
            return self._final
        return self._make_summary()

    def _make_summary(self, *, final: bool = False) -> BatchMetricsSummary:
        finished = final or self._state is BatchState.FINISHED
        now = self._now()
        end = self._agg.end_ts
        recent = self._window.rates(end if finished and end is not None else now)
        eta: tuple[float | None, float | None, float | None] = (None, None, None)
        if self.total_files is not None and not finished:
            start = self._agg.start_ts
            elapsed = now - start if start is not None else 0.0
            eta = estimate_eta(
                remaining=max(self.total_files - self._agg.total_files, 0),
                done=self._agg.total_files,
                elapsed=elapsed,
                recent_rate=self._window.completion_rate(now),
            )
        elif self.total_files is not None:  # ended: nothing left, or nothing more coming
            eta = (0.0, 0.0, 0.0) if self._agg.total_files >= self.total_files else (
                None, None, None)
        return self._agg.to_summary(
            self.batch_id,
            now=None if finished else now,
            state=self._outcome if finished else self._state.value,
            throughput_recent=recent,
            progress_total=self.total_files,
            eta=eta,
            in_flight=self._in_flight + self._in_flight_threads,
        )

    def live(self, interval: float = 1.0) -> AsyncIterator[BatchMetricsSummary]:
        """Yield a summary every ``interval`` seconds while the batch runs, then the final one.

        ``async for summary in metrics.live(0.5): ...`` waits for the batch to start
        if it has not. Each iterator is independent; a slow one skips the ticks it
        missed and never slows the producers. The batch ends when its ``async with``
        block exits, so iterate from a task outside that block (for instance in a
        task group around it), or the block would wait for the iteration forever.
        """
        interval = _check_positive(interval, "interval")
        return self._live(interval)

    async def _live(self, interval: float) -> AsyncIterator[BatchMetricsSummary]:
        self._require_asyncio()  # else it waits for a start that cannot come
        await self._started.wait()
        next_tick = anyio.current_time() + interval
        while not self._finished.is_set():
            with anyio.move_on_after(max(next_tick - anyio.current_time(), 0.0)):
                await self._finished.wait()
            if self._finished.is_set():
                break
            yield self.summary()
            now = anyio.current_time()
            next_tick += interval
            if next_tick <= now:  # the reader was slow: skip the ticks it missed
                next_tick = now + interval - (now - next_tick) % interval
        yield self.summary()

    async def wait_finished(self) -> BatchMetricsSummary:
        """Wait until the batch has exited; return its final summary."""
        self._require_asyncio()
        await self._finished.wait()
        return self.summary()

    def get_file_metrics(self) -> list[dict[str, Any]]:
        """Per-file rows as the reference's ``FileMetrics.to_dict()`` (plus ``bytes_processed``)."""
        return [file_row_dict(ev) for ev in self._require_files().rows()]

    def _require_files(self) -> FileTable:
        if self._files is None:
            raise RuntimeError(
                f"batch {self.batch_id!r} keeps no per-file rows (keep_files=False); "
                "stream them with sinks=[JsonlSink(...)] instead"
            )
        return self._files

    def state_dict(self) -> dict[str, Any]:
        """The aggregate's mergeable JSON state (see ``merge_states``)."""
        return self._agg.to_state()

    # -- exports -------------------------------------------------------------------------

    async def _export_summary(self) -> BatchMetricsSummary:
        """While running, the summary of every call that returned so far (``snapshot()``);
        once the consumer has failed, of what it folded (an export still helps then)."""
        if self._consumer_error is None:
            try:
                return await self.snapshot()
            except RuntimeError:
                if self._consumer_error is None:
                    raise
        return self.summary()

    async def export_json(self, path: str | os.PathLike[str]) -> None:
        """Write ``{"summary", "files", "state"}`` atomically (temp file + ``os.replace``).

        While the batch runs, the export holds every record call that returned before
        this call, as ``snapshot()`` does."""
        path = check_path(path, "path")
        self._require_asyncio()
        summary = await self._export_summary()
        files = self._files
        n = len(files) if files is not None else 0
        rows = files.rows(0, n) if files is not None else iter(())
        await write_json(path, summary.to_dict(), self._agg.to_state(), rows)
        logger.info("Batch metrics exported to %s", os.fspath(path))

    async def export_csv(self, path: str | os.PathLike[str]) -> None:
        """Write one CSV row per file atomically (reference columns first)."""
        path = check_path(path, "path")
        self._require_asyncio()
        files = self._require_files()
        await self._export_summary()
        n = len(files)
        if n == 0:
            logger.warning("No file metrics to export; writing the CSV header only")
        await write_csv(path, files.rows(0, n))
        logger.info("Batch metrics CSV exported to %s", os.fspath(path))


class _Checked(Generic[_T]):
    """A counter of a ``track()`` handle, checked as it is set: a bad value raises at
    the line that set it, not as the block ends (where the file's outcome would be lost)."""

    def __init__(self, check: Callable[[object, str], _T]) -> None:
        self._check = check
        self._name = self._slot = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name, self._slot = name, "_" + name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _Checked[_T]: ...
    @overload
    def __get__(self, obj: object, owner: type[Any]) -> _T: ...
    def __get__(self, obj: object, owner: type[Any]) -> _T | _Checked[_T]:
        return self if obj is None else cast(_T, getattr(obj, self._slot))

    def __set__(self, obj: object, value: _T) -> None:
        setattr(obj, self._slot, self._check(value, self._name))


class _TrackedFile:
    """What ``track()`` and ``track_threadsafe()`` share: the counters and the outcome."""

    __slots__ = ("_bytes_processed", "_measurements", "_memory_peak", "_metrics",
                 "_samples", "_skip_reason", "_t0", "filename")

    samples = _Checked(check_count)
    measurements = _Checked(check_count)
    bytes_processed = _Checked(check_count)
    memory_peak = _Checked(check_optional_count)

    def __init__(self, metrics: BatchMetrics, filename: str) -> None:
        self._metrics = metrics
        self.filename = filename
        self._samples = self._measurements = self._bytes_processed = 0
        self._memory_peak: int | None = None
        self._skip_reason: str | None = None
        self._t0 = 0.0

    def skip(self, reason: str = "") -> None:
        """Record this file as skipped (with ``reason``) instead of as a success."""
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__} {reason!r}")
        self._skip_reason = reason

    def _outcome(self, exc: BaseException | None) -> dict[str, Any] | None:
        """The ``record_file`` keywords for how the block ended; ``None``: record nothing."""
        duration = time.perf_counter() - self._t0
        if exc is None:
            if self._skip_reason is not None:
                return {"duration": duration, "status": "skipped",
                        "error_message": self._skip_reason}
            return {"duration": duration, "samples": self._samples,  # checked when set
                    "measurements": self._measurements,
                    "bytes_processed": self._bytes_processed, "memory_peak": self._memory_peak}
        if isinstance(exc, Exception):
            return {"duration": duration, "status": "error", "error_type": type(exc).__name__,
                    "error_message": str(exc)}
        return None  # cancelled or interrupted: not an outcome of the file


class Tracked(_TrackedFile):
    """The per-file handle of ``track()``; set its counters inside the block."""

    __slots__ = ()

    async def __aenter__(self) -> Tracked:
        if self._metrics._send is None:
            raise self._metrics._not_running()
        self._metrics._in_flight += 1
        self._t0 = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._metrics._in_flight -= 1
        fields = self._outcome(exc)
        if fields is not None:
            try:
                await self._metrics.record_file(self.filename, **fields)
            except RuntimeError as not_recorded:  # the batch has ended, or failed
                _keep_the_blocks_error(exc, self.filename, not_recorded)


class TrackedInThread(_TrackedFile):
    """The per-file handle of ``track_threadsafe()``: a sync context manager for threads."""

    __slots__ = ()

    def __enter__(self) -> TrackedInThread:
        m = self._metrics
        m._check_off_loop("track")  # before the block runs, not as it ends
        if m._state is not BatchState.RUNNING:
            raise m._not_running()
        with m._thread_lock:
            m._in_flight_threads += 1
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        m = self._metrics
        with m._thread_lock:
            m._in_flight_threads -= 1
        fields = self._outcome(exc)
        if fields is not None:
            try:
                m.record_file_threadsafe(self.filename, **fields)
            except RuntimeError as not_recorded:  # the batch has ended, or failed
                _keep_the_blocks_error(exc, self.filename, not_recorded)


def _keep_the_blocks_error(exc: BaseException | None, filename: str,
                           not_recorded: RuntimeError) -> None:
    """A block that raised goes on with its own exception, noted; one that did not
    raises why its file could not be recorded."""
    if exc is None:
        raise not_recorded
    exc.add_note(f"batchmetrics: {filename!r} was not recorded: {not_recorded}")


def _count_buffered(recv: MemoryObjectReceiveStream[Any]) -> int:
    """Take what is left in the stream; how many events it held."""
    items = []
    with contextlib.suppress(WouldBlock, EndOfStream, ClosedResourceError):
        while True:
            items.append(recv.receive_nowait())
    return _events_in(items)


def _events_in(items: Sequence[Any]) -> int:
    """How many events stream items hold: chunks are lists, snapshot markers hold none."""
    return sum(len(item) for item in items if item.__class__ is list)


async def _to_its_end(work: Coroutine[Any, Any, _T],
                      interruptions: list[BaseException]) -> _T:
    """``work``'s result, awaited to its end in a task of its own through asyncio's own
    cancellations of this task (``asyncio.timeout``, a ``Task.cancel()``), which an
    anyio shield does not stop: cut off, the exit would leave the summary file, the
    store and the rows unwritten. ``work`` keeps its own deadline; each cancellation
    is appended to ``interruptions``, for the caller to raise once it is done."""
    task = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.cancelled():  # the work itself was: not ours to outlast
                raise
            interruptions.append(exc)  # if the work is done, the next await says so


def _describe(exc: BaseException) -> str:
    """``Type: message``; an OSError's text names its file, which its repr leaves out."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Output(NamedTuple):
    """A file the batch writes."""

    path: str
    what: str  # for messages: "summary_path", "sinks[0] (JsonlSink)"
    replaced: bool  # written by replacing it (a temp file, then a rename), not in place


def _output_files(summary_path: str | None, sinks: Sequence[Sink]) -> list[_Output]:
    """The summary file and our file sinks' files."""
    files = [] if summary_path is None else [_Output(summary_path, "summary_path", True)]
    files += [_Output(s.path, f"sinks[{i}] ({type(s).__name__})", False)
              for i, s in enumerate(sinks) if isinstance(s, _FileSink)]
    return files


def _history_file(store: Store | None) -> list[_Output]:
    return [] if store is None else [_Output(store.path, "the history (store)", False)]


def _same_path(a: _Output, b: _Output) -> bool:
    """Whether two outputs name one file by their text (a device, such as
    ``/dev/null``, takes any number of writers)."""
    return _lexical(a.path) == _lexical(b.path) and not _is_device(a.path)


def _lexical(path: str) -> str:
    """``path`` without ``.`` parts and doubled slashes; ``..`` is left alone, as it
    goes up from where a link leads, not from the link's folder."""
    return path if ".." in path.split(os.sep) else os.path.normpath(path)


def _same_file(a: _Output, b: _Output) -> bool:
    """Whether two outputs would write one file, through links too (in a file
    thread: it stats them)."""
    def target(out: _Output) -> str:
        # a replaced file's link is itself replaced; a write in place follows links
        if out.replaced:
            return os.path.join(os.path.realpath(os.path.dirname(out.path)),
                                os.path.basename(out.path))
        return os.path.realpath(out.path)

    ta, tb = target(a), target(b)
    if a.replaced or b.replaced:  # a rename writes the name, not the file behind it
        return ta == tb
    if _is_device(ta):
        return False
    try:
        return ta == tb or os.path.samefile(ta, tb)  # hard links
    except OSError:  # one does not exist yet
        return False


def _is_device(path: str) -> bool:
    """An existing file that is not a regular one (``/dev/null``, a FIFO, a terminal)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _check_distinct_files(files: list[_Output],
                          same: Callable[[_Output, _Output], bool]) -> None:
    """Refuse two outputs on one file: each would overwrite the other's writes."""
    for i, a in enumerate(files):
        for b in files[:i]:
            if same(b, a):
                where = (repr(a.path) if a.path == b.path  # the same text: named once
                         else f"{b.path!r} and {a.path!r}")
                raise ValueError(f"{b.what} and {a.what} would write one file ({where}): "
                                 "each would overwrite the other")


def _float_reading(clock: Callable[[], float]) -> float:
    return float(clock())


def _wall_offset() -> float:
    """The wall time at which ``time.monotonic()`` read 0."""
    return time.time() - time.monotonic()


def _check_clock(reading: object, offset: float) -> float:
    """The clock's first reading plus ``offset``: seconds since the epoch that a date
    can be made of."""
    if isinstance(reading, bool) or not isinstance(reading, int | float):
        raise TypeError(f"clock must return a number (seconds since the epoch), got "
                        f"{type(reading).__name__} {reading!r}")
    now = reading + offset
    if not FIRST_STAMP <= now < STAMPS_END:  # NaN fails too
        raise ValueError(f"clock must return seconds since the epoch, a date between the "
                         f"years 1 and 9999, got {now!r}")
    return float(now)


def _unwritable(path: str, replaced: bool) -> str | None:
    """Why no file could be written at ``path``, or ``None``. ``replaced``: written by
    replacing it (a temp file beside it, then a rename), as the summary file is; else
    opened and written in place, as a sink's file is. In a file thread: a ``stat``
    hangs on a dead mount."""
    if not replaced:  # opened: a symlink's target is what gets written
        path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"its folder {folder!r} does not exist"
    try:  # replaced: a symlink is replaced as a file would be
        mode: int | None = (os.lstat if replaced else os.stat)(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        return "it is a folder"
    if replaced:
        try:
            replaced_mode(path)  # a link too: to a device, a FIFO, ...
        except ValueError as exc:
            return str(exc)
        writable = os.access(folder, os.W_OK | os.X_OK)
    else:
        writable = os.access(path if mode is not None else folder, os.W_OK)
    return None if writable else "permission denied"


def _file_name(given: object) -> str:
    return os.fspath(given) if isinstance(given, os.PathLike) else str(given)


def _file_argument(fn: Callable[..., Any]) -> tuple[int, str | None, object]:
    """Where ``@timed`` finds the file, its first parameter (after ``self`` or ``cls``: a
    method, decorated in its class body): its position among the positional arguments,
    its name when it may be passed as a keyword (else ``None``), and its default (else
    ``Parameter.empty``). The position is past any there can be for a keyword-only one."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read
        return 0, None, inspect.Parameter.empty
    at = 1 if params and params[0].name in ("self", "cls") else 0
    if len(params) <= at or params[at].kind is inspect.Parameter.VAR_KEYWORD:
        return at, None, inspect.Parameter.empty
    first = params[at]
    if first.kind is inspect.Parameter.KEYWORD_ONLY:
        return sys.maxsize, first.name, first.default
    keyword = first.name if first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else None
    return at, keyword, first.default


def _is_async_function(obj: object) -> TypeGuard[Callable[..., Coroutine[Any, Any, Any]]]:
    """``async def`` functions and objects with an ``async def __call__``."""
    if inspect.iscoroutinefunction(obj):
        return True
    call = inspect.getattr_static(type(obj), "__call__", None)  # inherited ones too
    return not inspect.isroutine(obj) and inspect.iscoroutinefunction(call)


def get_batch_stats(batch_id: str, metrics: BatchMetrics) -> dict[str, Any]:
    """The ``stats <batch_id>`` command of the reference: the summary as a dict."""
    if metrics.batch_id != batch_id:
        raise ValueError(f"Batch ID mismatch: expected {batch_id}, got {metrics.batch_id}")
    return metrics.summary().to_dict()


def _check_positive(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be > 0 and finite, got {value!r}")
    return float(value)

