"""Loggers whose records pass Axolotl's log filter.

Axolotl 0.19.0's logging configuration shows INFO records only from loggers whose
name starts with ``axolotl``, and WARNING and above from all others. The plugin's
loggers therefore live under ``axolotl.integrations.``, where Axolotl's own
integrations log, and follow ``AXOLOTL_LOG_LEVEL``.
"""

from axolotl.utils.logging import MultiProcessAdapter
from axolotl.utils.logging import get_logger as get_axolotl_logger


def get_logger(module_name: str) -> MultiProcessAdapter:
    """Return the logger of a ``pocl_axolotl`` module, which logs on rank 0 only."""
    return get_axolotl_logger(f"axolotl.integrations.{module_name}")
