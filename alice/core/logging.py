"""Log setup: text or one JSON object per line, each record carrying the request id."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)

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
        record.request_id = request_id_var.get() or "-"
        record.user_id = user_id_var.get() or "-"
        return record

    factory._alice = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_record_factory()


class _ContextFilter(logging.Filter):
    """For records made by a factory installed after ours."""

    def filter(self, record: logging.LogRecord) -> bool:
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


def _skip_unused_record_fields() -> None:
    # Every request writes an access line. Neither format prints where a call was made nor
    # its thread, so the record need not find out (the logging HOWTO's "Optimization": the
    # caller's frame alone cost a quarter of a line).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False


def make_handler(log_format: str = "text") -> logging.Handler:
    """The one handler ALICE logs through: stderr, text or JSON, request id on every line."""
    _skip_unused_record_fields()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
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
