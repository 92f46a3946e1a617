"""``ast.parse`` for the checks that read the project's sources (tests/unit/test_layers.py,
tests/unit/test_waits.py).

CPython 3.11 counts the AST constructor's recursion in state shared by the interpreter, so
another parse running meanwhile (in a thread, or in code a garbage collection runs) can make
a correct parse fail with "SystemError: AST constructor recursion depth mismatch"
(python/cpython#106905; seen once here). Such a parse is repeated; a real error is not.
"""

from __future__ import annotations

import ast

ATTEMPTS = 3


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    for attempt in range(ATTEMPTS):
        try:
            return ast.parse(source, filename)
        except SystemError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
