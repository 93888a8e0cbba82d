"""Regular expressions from outside (the admin invalidation endpoint), refused
when they could backtrack for ever.

Such a regex is matched against every key in L2 and, through pub/sub, in
every process's L1: one ``(a+)+$`` would pin every worker's CPU. Python's
``re`` has no time limit, so the shapes that backtrack exponentially are
refused up front: a repeat inside a repeat, an alternation inside a repeat,
and back references; and the pattern's length is bounded.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

MAX_LENGTH = 512

# The parser behind re.compile (``sre_parse``, deprecated as a public module).
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")
_REPEATS = {_constants.MAX_REPEAT, _constants.MIN_REPEAT, _constants.POSSESSIVE_REPEAT}
_UNSAFE_IN_REPEAT = {_constants.BRANCH, _constants.GROUPREF, _constants.GROUPREF_EXISTS}


def compile_guarded(text: str) -> re.Pattern[str]:
    """``re.compile(text)``; raises ValueError (saying why) for an invalid
    pattern or one that could backtrack exponentially."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"the pattern is longer than {MAX_LENGTH} characters")
    try:
        pattern = re.compile(text)
        _check(_parser.parse(text), inside_repeat=False)
    except re.error as exc:
        raise ValueError(str(exc)) from None
    return pattern


def _check(items: Any, *, inside_repeat: bool) -> None:
    for op, value in items:
        if op in (_constants.GROUPREF, _constants.GROUPREF_EXISTS):
            raise ValueError("back references are not allowed")
        if op in _REPEATS:
            _low, high, body = value
            repeats = high is _constants.MAXREPEAT or high > 1
            if repeats and inside_repeat:
                raise ValueError("a repeat inside a repeat can backtrack for ever; simplify the pattern")
            _check(body, inside_repeat=inside_repeat or repeats)
        elif op == _constants.BRANCH:
            if inside_repeat:
                raise ValueError(
                    "an alternation inside a repeat can backtrack for ever; simplify the pattern"
                )
            for branch in value[1]:
                _check(branch, inside_repeat=inside_repeat)
        elif op == _constants.SUBPATTERN:
            _check(value[-1], inside_repeat=inside_repeat)
        elif op in (_constants.ASSERT, _constants.ASSERT_NOT):
            _check(value[1], inside_repeat=inside_repeat)
        elif op == _constants.ATOMIC_GROUP:
            _check(value, inside_repeat=inside_repeat)
