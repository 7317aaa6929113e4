"""The per-file event: its layout, its statuses, and the checks on its fields.

An event is a plain tuple (the cheapest immutable value Python builds) with the
fields at the ``F_*`` positions below; :class:`FileRecord` is the same layout as a
``NamedTuple`` for code outside the hot path. Pure: stdlib only.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Final, NamedTuple

SUCCESS: Final = 0
ERROR: Final = 1
SKIPPED: Final = 2
#: Status names by code; the statuses are exactly these three.
STATUS_NAMES: Final = ("success", "error", "skipped")
STATUS_CODES: Final[dict[str, int]] = {name: code for code, name in enumerate(STATUS_NAMES)}

F_NAME: Final = 0
F_END: Final = 1
F_DURATION: Final = 2
F_SAMPLES: Final = 3
F_MEASUREMENTS: Final = 4
F_BYTES: Final = 5
F_STATUS: Final = 6
F_ERROR_TYPE: Final = 7
F_ERROR_MESSAGE: Final = 8
F_MEMORY_PEAK: Final = 9

#: The raw event tuple, as the record path builds it.
Event = tuple[str, float, float, int, int, int, int, "str | None", "str | None", "int | None"]


class FileRecord(NamedTuple):
    """One file's outcome, as sinks receive it.

    ``end_time`` is a Unix timestamp taken when the record call was made;
    ``start_time`` is ``end_time - duration`` (as the reference design does).
    """

    filename: str
    end_time: float
    duration: float
    samples: int
    measurements: int
    bytes_processed: int
    status_code: int
    error_type: str | None
    error_message: str | None
    memory_peak: int | None

    @property
    def status(self) -> str:
        return STATUS_NAMES[self.status_code]

    @property
    def start_time(self) -> float:
        return self.end_time - self.duration


class Columns:
    """The numeric columns of a batch of events, pulled out once at C speed.

    The aggregate and the per-file table both read them, so each column is built
    once per batch, not once per consumer of it.
    """

    __slots__ = ("durations", "measurements", "nbytes", "samples", "statuses")

    def __init__(self, events: Sequence[Event]) -> None:
        self.durations: list[float] = list(map(itemgetter(F_DURATION), events))
        self.statuses = bytes(map(itemgetter(F_STATUS), events))
        self.samples: list[int] = list(map(itemgetter(F_SAMPLES), events))
        self.measurements: list[int] = list(map(itemgetter(F_MEASUREMENTS), events))
        self.nbytes: list[int] = list(map(itemgetter(F_BYTES), events))


def check_filename(filename: object) -> str:
    """A non-empty plain ``str`` (a ``PathLike`` or ``str`` subclass is turned into one).

    Subclasses (``numpy.str_``, ...) are stored as plain ``str``: msgspec cannot encode them.
    """
    if type(filename) is not str:
        if isinstance(filename, os.PathLike):
            filename = os.fspath(filename)
        if not isinstance(filename, str):
            raise TypeError(f"filename must be a str or os.PathLike, got "
                            f"{type(filename).__name__} {filename!r}")
        filename = str.__str__(filename)  # the characters, whatever the subclass's __str__
    if not filename:
        raise ValueError("filename must not be empty, got ''")
    return filename


def check_path(value: object, field: str) -> str:
    """A file path: a non-empty ``str`` or ``os.PathLike`` of ``str``, as a ``str``."""
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):
        raise TypeError(f"{field} must be a str or os.PathLike of str, got "
                        f"{type(value).__name__} {value!r}")
    if not path:
        raise ValueError(f"{field} must not be empty, got {value!r}")
    if "\0" in path:  # no file system takes it; open() would say only "embedded null byte"
        raise ValueError(f"{field} must not contain a NUL character, got {value!r}")
    return path


def absolute(path: str) -> str:
    """``path`` made absolute against the working directory of now (as
    ``logging.FileHandler`` does), with ``..`` left for the OS to follow through links."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def check_optional_count(value: object, field: str) -> int | None:
    """``None``, or a count as ``check_count`` takes it."""
    return None if value is None else check_count(value, field)


def check_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be a bool, got {type(value).__name__} {value!r}")
    return value


#: The longest duration taken, in seconds (317 years): a file's start (its end less
#: its duration) stays a date ``datetime`` can write, and squares and sums of
#: durations stay far inside the float range (the variance never overflows).
MAX_SECONDS = 1e10
#: The stamps ``datetime`` can write: 0001-01-01 to the end of 9999, in Unix seconds.
FIRST_STAMP = -62_135_596_800.0
STAMPS_END = 253_402_300_800.0
#: Counts are ints below this: sums over any number of files stay exact ints that
#: still convert to float (for rates).
COUNT_LIMIT = 2**128


def is_finite_number(value: object) -> bool:
    """An int or a finite float, not a bool: what a stored or merged state may hold."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def is_bool(value: object) -> bool:
    """``bool``, or numpy's (which converts to float quietly)."""
    return isinstance(value, bool) or (
        type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def check_duration(value: object, field: str = "duration") -> float:
    """A number of seconds in ``[0, MAX_SECONDS]`` (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            if is_bool(value) or isinstance(value, str | bytes):
                raise TypeError
            value = float(value)  # type: ignore[arg-type]  # numpy floats, Decimal, ...
        except (TypeError, ValueError):
            raise TypeError(
                f"{field} must be a number of seconds, got {type(value).__name__} {value!r}"
            ) from None
    try:
        value = float(value)
    except OverflowError:  # an int past the float range
        raise ValueError(f"{field} must be finite, got {value!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{field} must be finite, got {value!r}")
    if value < 0.0:
        raise ValueError(f"{field} must be >= 0, got {value!r}")
    if value > MAX_SECONDS:
        raise ValueError(f"{field} must be <= {MAX_SECONDS:g} seconds, got {value!r}")
    return value or 0.0  # not -0.0


def check_count(value: object, field: str) -> int:
    """An integer ``>= 0``; ``bool``, floats and strings are refused."""
    if isinstance(value, bool | float | str | bytes):
        raise TypeError(f"{field} must be an int, got {type(value).__name__} {value!r}")
    try:
        count = operator.index(value)  # type: ignore[arg-type]  # int, numpy ints
    except TypeError:
        raise TypeError(f"{field} must be an int, got {type(value).__name__} {value!r}") from None
    if count < 0:
        raise ValueError(f"{field} must be >= 0, got {count!r}")
    if count >= COUNT_LIMIT:
        shown = repr(count) if count < 10**60 else f"an int of {count.bit_length()} bits"
        raise ValueError(f"{field} must be < 2**128, got {shown}")
    return count


def check_optional_str(value: object, field: str) -> str | None:
    """``None`` or a plain ``str`` (a ``str`` subclass is turned into one)."""
    if value is None or type(value) is str:
        return value
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str or None, got {type(value).__name__} {value!r}")
    return str.__str__(value)


def check_status(status: object) -> int:
    """The status code of ``"success"``, ``"error"`` or ``"skipped"``."""
    if not isinstance(status, str):
        raise TypeError(f"status must be a str, got {type(status).__name__} {status!r}")
    code = STATUS_CODES.get(status)
    if code is None:
        raise ValueError(f"status must be one of {', '.join(STATUS_NAMES)}; got {status!r}")
    return code


def check_fields(
    filename: Any,
    duration: Any,
    samples: Any,
    measurements: Any,
    bytes_processed: Any,
    error_type: Any,
    error_message: Any,
    memory_peak: Any,
) -> tuple[str, float, int, int, int, str | None, str | None, int | None]:
    """Check every field of a record call, in signature order; return them normalised.

    Raises ``TypeError``/``ValueError`` naming the first bad field and its value.
    """
    return (
        check_filename(filename),
        check_duration(duration),
        check_count(samples, "samples"),
        check_count(measurements, "measurements"),
        check_count(bytes_processed, "bytes_processed"),
        check_optional_str(error_type, "error_type"),
        check_optional_str(error_message, "error_message"),
        check_optional_count(memory_peak, "memory_peak"),
    )
