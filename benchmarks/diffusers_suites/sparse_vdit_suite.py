"""pytest plugin: run diffusers' own tests with a Sparse-vDiT map on every video transformer they build.

Loaded by ``run.py`` (``-p sparse_vdit_suite``, this folder on ``PYTHONPATH``) into a pytest run
of diffusers' exported ``tests/``. Environment:

* ``SPARSE_VDIT_SUITE_MAP``: ``full`` (every head FULL) or ``mixed`` (the five modes in turn
  over all heads); unset or empty runs stock diffusers, nothing patched.
* ``SPARSE_VDIT_SUITE_REPORT``: where to write the outcome of every test as JSON (optional).

With a map set, ``__init__`` of each supported transformer class ends with
``apply_sparse_vdit(transformer, map, backend="torch")``, so models built from a config, by
``from_pretrained`` (on the meta device too) and inside pipelines all run our processors. The
``torch`` backend runs every head, FULL included, through our sparse reference path (``auto``
would hand all-FULL layers to the stock attention and check nothing of ours).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

MAP_ENV, REPORT_ENV = "SPARSE_VDIT_SUITE_MAP", "SPARSE_VDIT_SUITE_REPORT"
MAPS = ("full", "mixed")
TILE_SIZE = 16  # the smallest the kernels take; the tests' grids are 64-1000 tokens

_installed = 0  # maps installed so far in this process; a test's count is the difference


def suite_map(transformer, kind: str):
    """The ``kind`` map (see :data:`MAPS`) for ``transformer``: one head spec per target head."""
    from diffusers_sparse_vdit import ModeSpec
    from diffusers_sparse_vdit.processors import sparse_targets
    from diffusers_sparse_vdit.testing import tiny_mode_map

    targets = sparse_targets(transformer)
    modules = dict(transformer.named_modules())
    heads = modules[targets[0]].heads
    if kind == "full":
        specs = [[ModeSpec.full()] * heads for _ in targets]
    elif kind == "mixed":
        # the modes in turn over all heads in layer order, sparse ones first: the smallest test
        # models (2 layers x 2 heads) still get DIAGONAL, MULTI_DIAGONAL and VERTICAL_STRIPE
        cycle = (
            ModeSpec.diagonal(1.0),
            ModeSpec.multi_diagonal(0.5),
            ModeSpec.vertical_stripe(4),
            ModeSpec.full(),
            ModeSpec.skip(),
        )
        specs = [[cycle[(layer * heads + head) % len(cycle)] for head in range(heads)] for layer in range(len(targets))]
    else:
        raise ValueError(f"{MAP_ENV}={kind!r}: choose one of {MAPS}, or leave it unset for stock diffusers")
    return tiny_mode_map(transformer, specs, tile_size=TILE_SIZE)


def install_on_construction(kind: str) -> list[type]:
    """Patch each supported transformer class so that every instance gets the ``kind`` map."""
    import diffusers
    from diffusers_sparse_vdit import apply_sparse_vdit
    from diffusers_sparse_vdit.config import FAMILIES

    classes = [getattr(diffusers, name) for names in FAMILIES.values() for name in names]
    for cls in classes:
        cls.__init__ = _with_map(cls, cls.__init__, kind, apply_sparse_vdit)
    return classes


def _with_map(cls, init, kind, apply_sparse_vdit):
    @functools.wraps(init)  # keeps the signature ConfigMixin reads the config keys from
    def __init__(self, *args, **kwargs):
        global _installed
        init(self, *args, **kwargs)
        if type(self) is cls:  # a subclass is another model; its own __init__ decides
            apply_sparse_vdit(self, suite_map(self, kind), backend="torch")
            _installed += 1

    return __init__


# pytest hooks ------------------------------------------------------------------------------

_run = {"map": "stock", "tests": {}}  # what the report file holds
_maps_before_test = 0


def pytest_configure(config):
    kind = os.environ.get(MAP_ENV, "")
    if kind:
        if kind not in MAPS:
            raise ValueError(f"{MAP_ENV}={kind!r}: choose one of {MAPS}, or leave it unset for stock diffusers")
        install_on_construction(kind)
        _run["map"] = kind


def pytest_report_header(config):
    return f"sparse-vdit suite: {_run['map']}"


def pytest_runtest_logstart(nodeid, location):
    global _maps_before_test
    _maps_before_test = _installed


def pytest_runtest_logreport(report):
    """One entry per test over its setup, call and teardown: the first phase that did not pass decides."""
    entry = _run["tests"].setdefault(report.nodeid, {"outcome": "passed", "message": "", "seconds": 0.0, "maps": 0})
    entry["seconds"] = round(entry["seconds"] + report.duration, 3)
    entry["maps"] = _installed - _maps_before_test  # transformers that got a map in this test
    outcome = _outcome(report)
    if entry["outcome"] in ("passed", "xpassed") and outcome != "passed":
        entry["outcome"], entry["message"] = outcome, _message(report)


def _outcome(report) -> str:
    xfail = hasattr(report, "wasxfail")
    if report.passed:
        return "xpassed" if xfail else "passed"
    if report.skipped:
        return "xfailed" if xfail else "skipped"
    return "failed" if report.when == "call" else "error"  # an error: setup or teardown failed


def _message(report) -> str:
    """The first line of why: the exception, a skip or xfail reason."""
    if hasattr(report, "wasxfail") and report.wasxfail:
        text = report.wasxfail
    elif isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        text = report.longrepr[2]
    else:
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(report.longrepr or "")
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get(REPORT_ENV)
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(path.name + ".tmp")
        aside.write_text(json.dumps(_run, indent=1))
        os.replace(aside, path)
