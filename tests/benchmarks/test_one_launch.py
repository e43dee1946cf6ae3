"""one_launch takes launch-config overrides on the command line (what a profiled variant runs with)."""

import pytest

from . import load_benchmark


def test_config_overrides_are_python_literals():
    one_launch = load_benchmark("one_launch")
    assert one_launch.parse_overrides("STAGES=4, PERSISTENT=True,LOOP='pv'") == {"STAGES": 4, "PERSISTENT": True, "LOOP": "pv"}
    assert one_launch.parse_overrides("") == {}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        one_launch.parse_overrides("STAGES")
