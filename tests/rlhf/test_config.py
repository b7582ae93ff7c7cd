from dataclasses import dataclass

import pytest

from services.rlhf.config import describe, from_dict, option, to_dict


@dataclass
class Example:
    lr: float = option(1e-5, "Peak learning rate.")
    tags: list = option(["a"], "Free-form labels.")


def test_round_trip_and_help_texts():
    config = Example(lr=3e-4)
    assert from_dict(Example, to_dict(config)) == config
    assert describe(Example) == [
        ("lr", 1e-5, "Peak learning rate."),
        ("tags", ["a"], "Free-form labels."),
    ]
    assert Example().tags is not Example().tags


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="Example has no field"):
        from_dict(Example, {"lr": 1.0, "lrr": 2.0})
