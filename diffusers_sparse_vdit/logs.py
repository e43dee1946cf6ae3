"""The package's loggers: children of diffusers' library logger.

``get_logger(__name__)`` in ``diffusers_sparse_vdit.search.runner`` returns the logger
``diffusers.sparse_vdit.search.runner``, so diffusers' own switches apply to our messages as
to its own: ``diffusers.utils.logging.set_verbosity_error()`` silences them,
``set_verbosity_info()`` shows them, and they go through its handler and rank-zero filter.
"""

from __future__ import annotations

import functools
import logging

__all__ = ["LOGGER_PREFIX", "get_logger", "log_once"]

LOGGER_PREFIX = "diffusers.sparse_vdit"


def get_logger(module_name: str) -> logging.Logger:
    """diffusers' logger for one of our modules (pass ``__name__``)."""
    from diffusers.utils import logging as diffusers_logging  # lazily: diffusers.utils takes seconds to import

    return diffusers_logging.get_logger(LOGGER_PREFIX + module_name.removeprefix(__package__))


@functools.cache
def log_once(module_name: str, level: int, message: str) -> None:
    """Log ``message`` at ``level`` under the module's logger, the first time only in this process
    (``log_once.cache_clear()`` forgets what was logged)."""
    get_logger(module_name).log(level, message)
