"""One log stream: loguru for voxline and pipecat, and uvicorn's stdlib lines (start-up, access, WebSocket) routed
into it, so `VOXLINE_LOG_JSON` gives one JSON object a line for everything the server prints, and credentials in a
URL's query (the softphone's event socket carries its per-call token there) never reach a log."""

from __future__ import annotations

import logging
import re
import sys

from loguru import logger

from pipelines.frame_push import trace_pushes

# Query parameters whose values are credentials, wherever a logged URL has them.
_SECRET_QUERY = re.compile(r"([?&](?:token|key|api_key|apikey|access_token|secret|signature|sig)=)[^&\s\"']*",
                           re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1[redacted]", text)


def configure_logging(level: str, json_lines: bool = False) -> None:
    logger.remove()
    # diagnose=False: loguru would otherwise print local variables' values in tracebacks (keys, tokens).
    if json_lines:
        # One JSON object a line; a call's lines carry call_id, stream_sid and agent in record.extra.
        logger.add(sys.stderr, level=level.upper(), serialize=True, diagnose=False, backtrace=False)
    else:
        logger.add(sys.stderr, level=level.upper(), format="{time:HH:mm:ss.SSS} {level: <7} {name}: {message}",
                   diagnose=False, backtrace=False)
    trace_pushes(level.upper() == "TRACE")  # pipecat's line at every push between processors


class ToLoguru(logging.Handler):
    """A stdlib handler that hands each record to loguru under the stdlib logger's name."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        name, function, line = record.name, record.funcName, record.lineno
        logger.patch(lambda r: r.update(name=name, function=function, line=line)).opt(
            exception=record.exc_info).log(level, redact(record.getMessage()))


def uvicorn_log_config(level: str) -> dict:
    """For `uvicorn.Config(log_config=...)`: applied in the server process and again in each worker."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"loguru": {"class": "runtime.logs.ToLoguru"}},
        "loggers": {
            "uvicorn": {"handlers": ["loguru"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["loguru"], "level": level, "propagate": False},
        },
    }
