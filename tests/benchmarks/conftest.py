"""Fixtures of the benchmark-script tests: the scripts are files, not package modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# The scripts import their shared modules (``toolkit``, ``_docs``) by plain name, as when a
# script runs; tests import them the same way, so each exists once in ``sys.modules``.
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


def load_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` under a private module name.

    The module is registered in ``sys.modules`` first: dataclasses look their module up there.
    ``benchmarks/`` goes on ``sys.path``, as when a script runs, for their shared ``_docs``.
    """
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module_name = f"benchmark_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
