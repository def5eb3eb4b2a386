"""make_conf: validated dataclass configs, built once per distinct set of overrides."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from featloc.config import ConfigError, make_conf


@dataclass
class _Conf:
    threshold: float = 1.0
    steps: int = 3
    scales: list = field(default_factory=lambda: [1.0])
    path: str = ""


def test_repeated_overrides_give_equal_but_separate_confs():
    a = make_conf(_Conf, {"threshold": 2.5, "scales": (1.0, 0.5)})
    a.scales.append(0.25)  # a caller mutating its conf must not change the next one
    a.steps = 99
    b = make_conf(_Conf, {"threshold": 2.5, "scales": [1.0, 0.5]})
    assert b == _Conf(threshold=2.5, steps=3, scales=[1.0, 0.5])
    assert a is not b


def test_distinct_overrides_stay_distinct():
    assert make_conf(_Conf, {"steps": 1}).steps == 1
    assert make_conf(_Conf, {"steps": 2}).steps == 2
    assert make_conf(_Conf, {"threshold": 1}) == make_conf(_Conf, {"threshold": 1.0})
    assert make_conf(_Conf, None, {"steps": 5}, {"steps": 6}).steps == 6  # later wins


def test_errors_are_raised_every_time():
    for _ in range(2):
        with pytest.raises(ConfigError, match="stepz"):
            make_conf(_Conf, {"stepz": 1})
        with pytest.raises(ConfigError, match="steps"):
            make_conf(_Conf, {"steps": "many"})


def test_values_json_cannot_spell_still_work():
    assert make_conf(_Conf, {"path": Path("a/b")}).path == "a/b"
