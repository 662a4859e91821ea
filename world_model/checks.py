"""Argument checks the packages share: one rule, one wording.

A count, an index or a seed is an integer: ``True`` is not 1 and ``2.0`` is not 2 here (Python counts ``bool`` among
the ints, so ``isinstance(x, int)`` alone lets ``num_envs=True`` through as one env)."""

from __future__ import annotations

from numbers import Integral
from typing import Any

MAX_SEED = 2**63 - 1  # seeds are stored as int64 (env infos, datasets)


def whole(value: Any, name: str, low: int = 0, high: int | None = None, note: str = "") -> int:
    """``value`` as an ``int`` in ``[low, high]`` (no upper bound where ``high`` is None); a bool, a float, a string
    or a number out of range raises ``ValueError`` naming ``name`` (``note``, if given, follows the rule in brackets,
    e.g. ``"1: off"``). NumPy integers pass."""
    rule = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    if note:
        rule += f" ({note})"
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return int(value)


def whole_or_none(value: Any, name: str, low: int = 0, high: int | None = None, note: str = "") -> int | None:
    """:func:`whole`, where ``None`` (whatever it means to the caller: auto, all, off) passes as itself."""
    return None if value is None else whole(value, name, low, high, note)


def positive_arg(text: str) -> int:
    """An argparse ``type``: an int >= 1 (``--threads 0`` is an error, not torch's default in disguise)."""
    import argparse

    try:
        return whole(int(text), "the value", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None


def changed_flags(parser: Any, args: Any, dests: Any) -> list[str]:
    """The option strings (``--as``, ``--fidelity-chunks``) of the argparse ``dests`` whose value in ``args`` is not
    the ``parser``'s default: the flags a user gave, for refusing those a run would not use."""
    flag = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return [flag[d] for d in dests if getattr(args, d) != parser.get_default(d)]


def seed_arg(text: str) -> int:
    """An argparse ``type`` for seeds: an int in [0, 2**63 - 1] (numpy's generators refuse negative ones)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must lie in [0, 2**63 - 1], got {value}")
    return value


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a command-line tool reports in one line (exit code 2) instead of a traceback: bad values
    (ValueError), missing or unwritable paths (OSError), unreadable model folders and datasets."""
    from world_model.checkpoint import CheckpointError
    from world_model.data.format import DatasetError

    return (ValueError, OSError, CheckpointError, DatasetError)
