"""Counting XLA compiles: a public function called eagerly a second time with the same shapes and
static options must reuse its compiled programs (compile nothing), not re-dispatch op by op."""

from __future__ import annotations

import contextlib
import logging

import jax


class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.names.append(message.split(" ")[1])


@contextlib.contextmanager
def count_compiles():
    """``with count_compiles() as names:`` the list of programs (``jit(f)``) compiled inside."""
    handler = _Count()
    logger = logging.getLogger("jax")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            yield handler.names
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
