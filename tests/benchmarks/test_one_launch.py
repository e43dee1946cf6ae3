"""one_launch takes launch-config overrides on the command line (what a profiled variant runs with)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_config_overrides_are_python_literals():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import one_launch
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert one_launch.parse_overrides("STAGES=4, PERSISTENT=True,LOOP='pv'") == {"STAGES": 4, "PERSISTENT": True, "LOOP": "pv"}
    assert one_launch.parse_overrides("") == {}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        one_launch.parse_overrides("STAGES")
