"""Log setup: text or one JSON object per line, each record carrying the request id.

Every request writes an access line, so a line's cost is the log's cost. Under load
(`wrk` on `GET /auth/me`, py-spy at 1,000 Hz) a line was ~15 % of the request's time: a
`write` to stderr for each line, a `getpid` for each record, and `strftime` for each
timestamp. Here a record takes the process id from memory, the text format's timestamp
is made once a second, and the handler writes the lines made in one turn of the event
loop with one `write` (`LineHandler`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from threading import get_ident
from typing import Any, TextIO

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)

# The process id, for every record (logging would ask the kernel for it on each one).
_pid = os.getpid()


def _note_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_pid)

# Fields of an access-log record (passed as `extra`) that the JSON formatter writes out.
ACCESS_FIELDS = ("method", "route", "status", "duration_ms")


def _install_record_factory() -> None:
    """Every record, whichever logger and handler (pytest's caplog, a library's own), carries
    the request id and user id of the request it was made in ("-" outside a request)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_alice", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.process is None:  # logging.logProcesses is off (make_handler)
            record.process = _pid
        record.request_id = request_id_var.get() or "-"
        record.user_id = user_id_var.get() or "-"
        return record

    factory._alice = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_record_factory()


class _ContextFilter(logging.Filter):
    """For records made by a factory installed after ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.process is None:
            record.process = _pid
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        if not hasattr(record, "user_id"):
            record.user_id = user_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "pid": record.process,
        }
        user_id = getattr(record, "user_id", "-")
        if user_id != "-":
            out["user_id"] = user_id
        for key in ACCESS_FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class TextFormatter(logging.Formatter):
    """logging's own text format, with the date and time made once a second (not per line)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: int | None = None
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"  # logging's default_msec_format


class LineHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes the lines made in one turn of the event loop together,
    with one `write`, at the end of the turn. A line of WARNING or above, or one made outside
    the loop's thread, is written at once (with any held before it, so the order stands).
    Lines wait at most until the loop's next turn; `logging.shutdown` (at exit) writes what
    is left. What a hard kill (SIGKILL) loses is the turn's lines at most."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on
        self._flush_thread = 0  # and its thread

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._held.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()
            return
        due = self._flush_on
        if due is not None and self._flush_thread == get_ident() and not due.is_closed():
            return  # written with this turn's lines
        # (Looked up once a turn: on Python 3.11 finding the running loop costs a getpid.)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if due is not None:
            self.flush()  # another loop's or thread's lines first
        self._flush_on, self._flush_thread = loop, get_ident()
        loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            if self._held:
                lines, self._held = "".join(self._held), []
                try:
                    self.stream.write(lines)
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": "log lines lost"}))
            super().flush()


def _skip_unused_record_fields() -> None:
    # Every request writes an access line. Neither format prints where a call was made nor
    # its thread, so the record need not find out (the logging HOWTO's "Optimization": the
    # caller's frame alone cost a quarter of a line).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False  # the record factory and the filter set it from memory


def make_handler(log_format: str = "text") -> logging.Handler:
    """The one handler ALICE logs through: stderr, text or JSON, request id on every line."""
    _skip_unused_record_fields()
    handler = LineHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler._alice = True  # type: ignore[attr-defined]
    return handler


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_alice", False):
            root.removeHandler(old)
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
    # uvicorn's own access log would repeat ours without the request id.
    logging.getLogger("uvicorn.access").disabled = True
    _quiet_http_client()


def _quiet_http_client() -> None:
    # The SDK's HTTP client logs every request at INFO ("HTTP Request: POST .../v1/messages
    # 200 OK"): one line per reply that says nothing the access log and the AI error log do
    # not. Its warnings and errors still come through.
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def logging_config(log_format: str, level: int = logging.INFO) -> dict[str, Any]:
    """The same setup as a `logging.config.dictConfig` dict, for uvicorn's `log_config`:
    uvicorn applies it again in every worker process it spawns, which start with no handler."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"alice": {"()": "alice.core.logging.make_handler", "log_format": log_format}},
        "root": {"handlers": ["alice"], "level": logging.getLevelName(level)},
        "loggers": {
            "httpx2": {"level": "WARNING"},
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
