"""The run table names what the server scores: the test split, or the validation slice with task.evaluate_on."""

from __future__ import annotations

from fedsb.cli.run import dp_columns, held_out
from fedsb.config import from_dict, validate


def test_headers_say_val_when_the_validation_slice_is_scored() -> None:
    test_cfg = validate(from_dict({}))
    val_cfg = validate(from_dict({"task": {"evaluate_on": "validation"}}))
    assert held_out(test_cfg) == "test" and held_out(val_cfg) == "validation"
    assert dp_columns(test_cfg)[1][1:3] == ["test acc", "test loss"]
    assert dp_columns(val_cfg)[1][1:3] == ["val acc", "val loss"]
    dp_val = validate(from_dict({"task": {"evaluate_on": "validation"}, "dp": {"mode": "sample", "epsilon": 3.0}}))
    assert "eps(max)" in dp_columns(dp_val)[1] and "val acc" in dp_columns(dp_val)[1]
