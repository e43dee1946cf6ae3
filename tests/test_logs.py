"""The package logs through diffusers' logger tree, so diffusers' verbosity switches reach it."""

import importlib
import logging
import pkgutil

import pytest
from diffusers.utils import logging as diffusers_logging

import diffusers_sparse_vdit
from diffusers_sparse_vdit import remove_sparse_vdit
from diffusers_sparse_vdit.logs import LOGGER_PREFIX, get_logger
from diffusers_sparse_vdit.testing import tiny_pipeline


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def records():
    handler = Records()
    level = diffusers_logging.get_verbosity()
    diffusers_logging.add_handler(handler)
    yield handler.records
    diffusers_logging.remove_handler(handler)
    diffusers_logging.set_verbosity(level)


def test_every_module_logger_is_a_child_of_diffusers_logger():
    for module in pkgutil.walk_packages(diffusers_sparse_vdit.__path__, "diffusers_sparse_vdit."):
        importlib.import_module(module.name)
    names = list(logging.Logger.manager.loggerDict)
    assert not [n for n in names if n.startswith("diffusers_sparse_vdit")]
    assert f"{LOGGER_PREFIX}.processors.apply" in names and f"{LOGGER_PREFIX}.search.runner" in names
    assert get_logger("diffusers_sparse_vdit.config").name == "diffusers.sparse_vdit.config"


def test_diffusers_verbosity_silences_and_shows_our_messages(records):
    pipe = tiny_pipeline("wan")
    diffusers_logging.set_verbosity_error()
    remove_sparse_vdit(pipe)  # warns: no map applied
    assert not records
    diffusers_logging.set_verbosity_warning()
    remove_sparse_vdit(pipe)
    assert [r.name for r in records] == ["diffusers.sparse_vdit.processors.apply"]
    assert "no Sparse-vDiT map is applied" in records[0].getMessage()
    diffusers_logging.set_verbosity_info()
    assert get_logger("diffusers_sparse_vdit.search.runner").isEnabledFor(logging.INFO)
