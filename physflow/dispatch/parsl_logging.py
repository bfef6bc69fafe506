"""parsl/parsl.log as physflow writes it: Parsl's file logging without its per-task lines at INFO.

Parsl's DataFlowKernel logs about nine lines below WARNING for every task: state changes,
submission and launch (each carries a ``parsl.task`` attribute) and "standard out/error for
task N will (not) be redirected". physflow's journal records each task's events already, and
writing those lines (format, file write, the handler's lock, taken while the DataFlowKernel
holds its task-state lock) was most of the submitting process's time on a flood of short
tasks: ``bench/dispatch_overhead.py`` gave physflow 0.85x raw Parsl's tasks/s with them and
1.08x without. At ``parsl_log_level: info`` the file keeps Parsl's other INFO lines (blocks,
executors, start-up and shutdown) and every warning and error; ``debug`` keeps everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from parsl.logconfigs.file import FileLogging


def keep_line(record: logging.LogRecord) -> bool:
    """A logging filter: False for the DataFlowKernel's per-task lines below WARNING."""
    per_task = hasattr(record, "parsl.task") or record.funcName == "log_std_stream"
    return not (record.name == "parsl.dataflow.dflow" and record.levelno < logging.WARNING and per_task)


class ParslFileLogging(FileLogging):
    """Parsl's ``FileLogging``; at INFO its file leaves out the per-task lines (module docstring)."""

    def initialize_logging(self, *, log_dir: Path, log_name: str) -> Callable[[], None]:
        undo = super().initialize_logging(log_dir=log_dir, log_name=log_name)
        if self.level == logging.INFO:
            path = (log_dir / f"{log_name}.log").absolute()
            for handler in logging.getLogger("parsl").handlers:
                if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
                    handler.addFilter(keep_line)
        return undo
