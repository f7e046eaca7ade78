"""``SWARMGATE_GC_THRESHOLD`` and ``SWARMGATE_HOT_PATH``: parsed, checked, and what
``tune_gc`` does to a process (a real subprocess, so this one's collector is left alone)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, Settings

PROBE = """
import gc
from gateway.app import tune_gc
before = gc.get_threshold()
tune_gc({n})
after = gc.get_threshold()
print(before[0], after[0], after[1:] == before[1:], gc.get_freeze_count() > 0)
"""


def test_the_gc_threshold_is_20000_unless_set_and_never_negative() -> None:
    assert Settings.from_env({}).gc_threshold == 20_000
    assert Settings.from_env({"SWARMGATE_GC_THRESHOLD": "0"}).gc_threshold == 0
    with pytest.raises(ConfigError, match="SWARMGATE_GC_THRESHOLD must be 0 or more"):
        Settings.from_env({"SWARMGATE_GC_THRESHOLD": "-1"})


def test_the_hot_path_is_on_unless_turned_off() -> None:
    assert Settings.from_env({}).hot_path is True
    assert Settings.from_env({"SWARMGATE_HOT_PATH": "0"}).hot_path is False


@pytest.mark.parametrize(
    ("n", "expected"), [(30000, "700 30000 True True"), (0, "700 700 True False")]
)
def test_tune_gc_freezes_the_start_up_objects_and_raises_the_first_threshold(
    n: int, expected: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(n=n)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == expected.split()
