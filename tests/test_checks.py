"""The shared integer check, and the arguments that let a bool or a float through before it."""

import numpy as np
import pytest

from mg3_env.vector import MatrixGameVectorEnv
from world_model.checks import whole, whole_or_none
from world_model.data.levels import generated_level
from world_model.runtime import RuntimeOptions


def test_whole_takes_ints_and_numpy_ints_in_range():
    assert whole(0, "n") == 0
    assert whole(np.int64(3), "n", 1) == 3 and type(whole(np.int64(3), "n", 1)) is int
    assert whole(5, "n", 1, 5) == 5
    assert whole_or_none(None, "n", 1) is None


@pytest.mark.parametrize("value", [True, False, 2.0, "3", None, -1, 6])
def test_whole_refuses_bools_floats_strings_and_numbers_out_of_range(value):
    with pytest.raises(ValueError, match=r"n must be an int in \[0, 5\] \(the note\), got "):
        whole(value, "n", 0, 5, note="the note")


def test_the_rule_says_no_upper_bound_where_there_is_none():
    with pytest.raises(ValueError, match=r"^k must be an int >= 1, got 0$"):
        whole(0, "k", 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MatrixGameVectorEnv(True),  # was one env
        lambda: RuntimeOptions(sequence_parallel=True),  # was 1 (off)
        lambda: RuntimeOptions(decode_segment=2.0),
        lambda: generated_level(True),  # was level 1
    ],
)
def test_a_bool_or_a_float_is_no_count(make):
    with pytest.raises(ValueError, match="must be an int"):
        make()


def test_thread_counts_on_the_command_line_are_positive():
    import argparse

    from world_model.checks import positive_arg

    assert positive_arg("2") == 2
    for text in ("0", "-1", "1.5", "two"):
        with pytest.raises(argparse.ArgumentTypeError, match="an integer >= 1"):
            positive_arg(text)


def test_changed_flags_names_the_options_given_by_their_flag():
    import argparse

    from world_model.checks import changed_flags

    p = argparse.ArgumentParser()
    p.add_argument("--as", dest="rename", default="")
    p.add_argument("--dit-dtype", default=None)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(["--as", "memory=base", "--steps", "3"])  # --steps at its default: not a change
    assert changed_flags(p, args, ("rename", "dit_dtype", "steps")) == ["--as"]
