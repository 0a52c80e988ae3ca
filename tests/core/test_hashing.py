"""Content hashes and one-line errors: the identity of results, and how bad input is said."""

from __future__ import annotations

from husai.config.experiment import TaskConfig
from husai.core.errors import ConfigError, InputError, first_line
from husai.core.hashing import stable_hash


def test_the_hash_ignores_key_order_and_sees_every_value() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert stable_hash({"a": (1, 2)}) == stable_hash({"a": [1, 2]})
    assert stable_hash(TaskConfig()) == stable_hash(TaskConfig().model_dump(mode="json"))
    assert len(stable_hash({})) == 16


def test_errors_are_one_line() -> None:
    assert issubclass(ConfigError, InputError)
    assert first_line(ValueError("first\nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError"
