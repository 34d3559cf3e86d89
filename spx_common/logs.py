"""Structured JSON logging: one JSON object per line on stderr (supervisord files it)."""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(service: str, level: str = "INFO") -> logging.Logger:
    """Route the root logger to stderr as JSON lines; idempotent."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_spx", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler._spx = True  # type: ignore[attr-defined]  # our marker on a stdlib handler: re-setup replaces it
    root.addHandler(handler)
    root.setLevel(level)
    return logging.getLogger(service)


class RateLimitedLog:
    """Log at most once per ``period_s`` per key, counting what was suppressed (bad input floods)."""

    def __init__(self, logger: logging.Logger, period_s: float = 5.0) -> None:
        self.logger = logger
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, **extra: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        self.logger.warning(msg, extra={**extra, "key": key, "suppressed": suppressed})
