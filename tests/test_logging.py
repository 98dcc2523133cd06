"""One log format for the app's events and uvicorn's lines; JSON off a terminal."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import uvicorn

from app.observability import configure_logging, get_logger


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield
    logging.getLogger("uvicorn.access").propagate = True  # as a process starts
    configure_logging("WARNING")


def emit() -> None:
    get_logger("saerec.test").warning("app_event", answer=42)
    logging.getLogger("uvicorn.error").warning("Uvicorn running on %s", "http://127.0.0.1:8000")


def test_not_a_terminal_gets_json_lines_from_app_and_uvicorn_alike() -> None:
    stream = io.StringIO()
    configure_logging("INFO", json_logs=False, stream=stream)
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(io.StringIO()))
    configure_logging("INFO", json_logs=False, stream=stream)  # uvicorn's handler dropped
    emit()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "app_event",
        "Uvicorn running on http://127.0.0.1:8000",
    ]
    assert lines[0]["answer"] == 42 and lines[1]["logger"] == "uvicorn.error"
    assert all(line["level"] == "warning" and line["timestamp"] for line in lines)
    assert not logging.getLogger("uvicorn.error").handlers


def test_a_terminal_gets_key_value_lines_unless_log_json_is_set() -> None:
    terminal = Terminal()
    configure_logging("INFO", json_logs=False, stream=terminal)
    emit()
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 2 and not lines[0].startswith("{")
    assert "app_event" in lines[0] and "Uvicorn running on" in lines[1]
    forced = Terminal()
    configure_logging("INFO", json_logs=True, stream=forced)
    emit()
    assert [json.loads(line)["event"] for line in forced.getvalue().splitlines()][0] == "app_event"


@pytest.mark.parametrize("access_log", [False, True])
def test_uvicorn_access_lines_follow_its_access_log_setting(access_log: bool) -> None:
    """`saerec serve` passes access_log=False; the app's logging set up after uvicorn's
    must not turn a line per request back on (nor drop them when they are asked for)."""
    uvicorn.Config("app.main:create_app", log_level="info", access_log=access_log)
    stream = io.StringIO()
    configure_logging("INFO", json_logs=True, stream=stream)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "c", "GET", "/", "1.1", 200)
    emit()
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert ('c - "GET / HTTP/1.1" 200' in events) is access_log
    assert "app_event" in events and "Uvicorn running on http://127.0.0.1:8000" in events
