"""The examples in the agent modules' docstrings run and hold."""
import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["rlhf.agent.format", "rlhf.agent.trajectory", "rlhf.trajectory_buffer"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
