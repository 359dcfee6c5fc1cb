"""Keep `llmkit.train(...)`, `llmkit.export(...)` and `llmkit.embed(...)` callable.

Importing the submodule `llmkit.train` makes Python rebind the attribute `llmkit.train` (the API
function in `llmkit/__init__.py`) to the module. Giving the module a `__call__` that forwards to
the function keeps the one-word Python API working whichever import happened first.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable


def make_module_callable(module_name: str, func: Callable) -> None:
    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return func(*args, **kwargs)

    CallableModule.__call__.__doc__ = func.__doc__
    sys.modules[module_name].__class__ = CallableModule
