"""How ALICE's handler writes log lines (`alice.core.logging`): the lines of one turn of the
event loop in one write after the turn, anything of WARNING or above and anything made outside
a loop at once, nothing lost or reordered; the text format's time made once a second, exactly
as logging makes it; every record carrying the process id without asking the kernel."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator

import pytest

from alice.core.logging import TEXT_FORMAT, LineHandler, TextFormatter, make_handler


class Writes:
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[str]:
        return "".join(self.writes).splitlines()


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, Writes]]:
    stream = Writes()
    handler = LineHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.log_lines")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


async def test_the_lines_of_one_turn_are_written_together_after_it(log):
    logger, stream = log
    for i in range(3):
        logger.info("line %d", i)
    assert stream.writes == []  # held until the turn ends
    await asyncio.sleep(0)
    assert stream.writes == ["INFO line 0\nINFO line 1\nINFO line 2\n"]
    logger.info("next turn")
    await asyncio.sleep(0)
    assert stream.writes[1:] == ["INFO next turn\n"]


async def test_a_warning_is_written_at_once_after_the_lines_held_before_it(log):
    logger, stream = log
    logger.info("before")
    logger.warning("trouble")
    assert stream.lines == ["INFO before", "WARNING trouble"]
    logger.error("worse")
    assert stream.lines[-1] == "ERROR worse"
    await asyncio.sleep(0)
    assert stream.lines == ["INFO before", "WARNING trouble", "ERROR worse"]


async def test_a_line_from_another_thread_is_written_at_once_and_in_order(log):
    logger, stream = log
    logger.info("from the loop")
    await asyncio.to_thread(logger.info, "from a thread")
    # The thread found no running loop: it wrote what was held, then its own line.
    assert stream.lines == ["INFO from the loop", "INFO from a thread"]


def test_outside_a_loop_each_line_is_written_at_once(log):
    logger, stream = log
    logger.info("one")
    assert stream.writes == ["INFO one\n"]
    logger.debug("two")
    assert stream.writes == ["INFO one\n", "DEBUG two\n"]


def test_lines_held_when_a_loop_closes_are_written_first_later_or_at_exit(log):
    logger, stream = log

    async def one_line(text: str) -> None:
        logger.info(text)

    first = asyncio.new_event_loop()
    # The flush is due on the next turn; stop the loop before it comes.
    first.call_soon(first.stop)
    first.call_soon(logger.info, "held")
    first.run_forever()
    first.close()
    assert stream.writes == []
    # The next line, in another loop, writes the held one before its own.
    second = asyncio.new_event_loop()
    second.run_until_complete(one_line("next"))
    second.close()
    assert stream.lines[:1] == ["INFO held"]
    # What a closed loop left is written by flush (logging.shutdown calls it at exit).
    for handler in logger.handlers:
        handler.flush()
    assert stream.lines == ["INFO held", "INFO next"]


def test_the_text_time_is_logging_s_own_across_seconds():
    ours, theirs = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    start = 1_765_000_000.0
    for offset in (0.0, 0.5, 0.9995, 1.0, 1.0004, 1.999, 2.0, 61.25, 3600.001, 0.25):
        record = logging.makeLogRecord({"msg": "m", "request_id": "r", "created": start + offset})
        record.msecs = (record.created - int(record.created)) * 1000
        assert ours.format(record) == theirs.format(record), offset
        assert ours.formatTime(record, "%H:%M") == theirs.formatTime(record, "%H:%M")


@pytest.fixture
def alice_log_setup() -> Iterator[None]:
    """`make_handler` turns logging's own look-ups off for the whole process: put them back."""
    saved = (
        logging._srcfile,  # type: ignore[attr-defined]
        logging.logThreads,
        logging.logMultiprocessing,
        logging.logProcesses,
    )
    try:
        yield
    finally:
        (
            logging._srcfile,  # type: ignore[attr-defined]
            logging.logThreads,
            logging.logMultiprocessing,
            logging.logProcesses,
        ) = saved


def make_record() -> logging.LogRecord:
    return logging.getLogger("tests.log_lines").makeRecord(
        "tests.log_lines", logging.INFO, __file__, 1, "m", (), None
    )


def test_a_record_carries_this_process_s_id(alice_log_setup):
    handler = make_handler("json")  # turns logging's own lookup off
    assert logging.logProcesses is False
    record = make_record()
    assert record.process == os.getpid()
    assert f'"pid": {os.getpid()}' in handler.format(record)


def test_a_forked_child_s_records_carry_the_child_s_id(alice_log_setup):
    """A server that forks its workers (gunicorn's uvicorn workers do) must not log the
    parent's id from every child."""
    make_handler("json")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what its record carries, then leave at once
        try:
            os.write(write_end, f"{make_record().process} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        carried, actual = pipe.read().split()
    os.waitpid(child, 0)
    assert int(actual) == child
    assert int(carried) == child != os.getpid()
