"""Prometheus metrics and one structured JSON log line per admission decision.

Metric names follow controller-runtime's and Kyverno's admission metrics: a counter of
requests by outcome, a histogram of the handling time, and the serving certificate's
expiry. Logs never carry request bodies, patches or key material.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any, TextIO

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LOGGER_NAME = "istio_spiffe_webhook"
log = logging.getLogger(LOGGER_NAME)

# Buckets from 100 µs: the handling itself takes tens of microseconds.
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class Metrics:
    """The webhook's metrics, in a registry of their own (tests make a fresh one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "istio_spiffe_webhook_admission_requests_total",
            "Admission requests by outcome (mutated, unchanged, rejected, error), the reason"
            " an unchanged or rejected request got, and whether it was a dry run.",
            ["outcome", "reason", "dry_run"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "istio_spiffe_webhook_admission_duration_seconds",
            "Time to handle one admission request, from the whole body read to the response.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.patch_operations = Counter(
            "istio_spiffe_webhook_patch_operations_total",
            "JSON Patch operations returned to the API server.",
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "istio_spiffe_webhook_certificate_expiration_timestamp_seconds",
            "Unix time at which the serving certificate in use expires.",
            registry=self.registry,
        )
        self.certificate_reloads = Counter(
            "istio_spiffe_webhook_certificate_reloads_total",
            "Serving certificate reloads by result (success, error).",
            ["result"],
            registry=self.registry,
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, the record's `fields` and, for a
    record with an exception, `error` (`Type: message`) and `traceback`."""

    _second = -1  # the second `_stamp` is for: strftime once a second, not once a line
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(
            record.created, record.levelname, record.getMessage(), getattr(record, "fields", None)
        )
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            if not record.exc_text:  # cached on the record for other handlers, as logging does
                record.exc_text = self.formatException(record.exc_info)
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _dumps(entry)

    def entry(
        self, created: float, levelname: str, msg: str, fields: dict[str, Any] | None
    ) -> dict[str, Any]:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "time": f"{self._stamp}.{int((created - second) * 1000):03d}Z",
            "level": levelname.lower(),
            "msg": msg,
        }
        if fields:
            entry.update(fields)
        return entry


def _dumps(entry: dict[str, Any]) -> str:
    try:
        return orjson.dumps(entry, default=str).decode()
    except TypeError:  # e.g. an integer over 64 bits: a log line must never fail
        return json.dumps(entry, default=str, ensure_ascii=False)


class JsonLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The server's handler: a StreamHandler with the JsonFormatter, which can also write
    a line without a LogRecord (`write_line`)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())

    def write_line(self, levelno: int, msg: str, fields: dict[str, Any]) -> bool:
        """Write what `handle` would for a record of `fields` without an exception, less
        making the LogRecord and passing it down the logger chain: that was 8 % of a
        /mutate request's CPU time (bench/README.md, "Speed tricks"). False when the write
        failed or another formatter was set: the caller then logs the standard way."""
        formatter = self.formatter
        if not isinstance(formatter, JsonFormatter):  # someone set another: theirs formats
            return False
        line = _dumps(formatter.entry(time.time(), logging.getLevelName(levelno), msg, fields))
        with self.lock or contextlib.nullcontext():  # as Handler.handle takes it
            try:
                self.stream.write(line + self.terminator)
                self.flush()
            except Exception:
                return False
        return True


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """JSON lines at `level` and above to `stream` (standard error by default)."""
    handler = JsonLineHandler(stream or sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our lines carry no thread or process names: do not look them up for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One line per decision is ours; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True


class Observer:
    """Records each admission decision in the metrics and the log."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Every request records these: look each labelled child up once, not per request
        # (`labels()` costs microseconds; the label values are a small fixed set).
        self._counters: dict[tuple[str, str, bool], Any] = {}
        self._histograms: dict[str, Any] = {}

    def admission(
        self,
        *,
        outcome: str,
        reason: str,
        dry_run: bool,
        seconds: float,
        operations: int = 0,
        fields: dict[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Count the decision and log its line (`error`: the exception of a failure, whose
        traceback the line carries)."""
        counter = self._counters.get((outcome, reason, dry_run))
        if counter is None:
            counter = self.metrics.requests.labels(outcome, reason, "true" if dry_run else "false")
            self._counters[(outcome, reason, dry_run)] = counter
        counter.inc()
        histogram = self._histograms.get(outcome)
        if histogram is None:
            histogram = self._histograms[outcome] = self.metrics.duration.labels(outcome)
        histogram.observe(seconds)
        if operations:
            self.metrics.patch_operations.inc(operations)
        level = _LEVELS.get(outcome, logging.INFO)
        if log.isEnabledFor(level):
            entry = {
                "outcome": outcome,
                "reason": reason,
                "dry_run": dry_run,
                "patch_operations": operations,
                "duration_ms": round(seconds * 1000, 3),
            }
            if fields:
                entry.update(fields)
            handler = _sole_json_handler(level)
            if (
                error is None
                and handler is not None
                and handler.write_line(level, "admission", entry)
            ):
                return
            # `handle(makeRecord(...))` is what `log.log` does, less its walk up the stack for
            # the caller, which our lines omit.
            exc_info = (type(error), error, error.__traceback__) if error is not None else None
            record = log.makeRecord(
                LOGGER_NAME, level, __file__, 0, "admission", (), exc_info, extra={"fields": entry}
            )
            log.handle(record)


def _sole_json_handler(level: int) -> JsonLineHandler | None:
    """The handler a record of ours at `level` would reach when it is only the one
    `configure_logging` installs and nothing on the way could filter, divert or copy the
    record (no filters, no other handler: not under pytest's capture, nor a set-up of the
    user's); None otherwise, and the record is made and handled as usual."""
    root = logging.root
    if log.handlers or log.filters or log.disabled or not log.propagate or root.filters:
        return None
    if len(root.handlers) != 1:
        return None
    handler = root.handlers[0]
    if type(handler) is not JsonLineHandler or handler.filters or level < handler.level:
        return None
    return handler


# An answer is info, a refused request a warning, a failure (HTTP 500) an error.
_LEVELS = {"rejected": logging.WARNING, "error": logging.ERROR}
