"""Checks of a registered model's options against their type annotations, and of its sizes.

Values arrive from Python, from `train.py --model-option` (Python literals) and from JSON or TOML
configs and search spaces, so a tuple may come as a list and a float as an int; numpy scalars
(a dataset's sizes) count as the Python ones. A bool is no int here, nor an int a bool.
"""

import collections.abc
import numbers
import types
import typing
from typing import Any

import numpy as np

# Options that are sizes or counts (of classes, steps, channels, units, a window), or sequences
# of them: each must be >= 1 (None, where an annotation allows it, stays "any" or "none").
SIZES = frozenset(
    {
        "attention_size",
        "channels",
        "dense",
        "embed_dim",
        "encoder_sizes",
        "features",
        "filters",
        "hidden_size",
        "hidden_sizes",
        "horizon",
        "input_shape",
        "kernel_size",
        "latent_dim",
        "max_length",
        "num_classes",
        "pool_size",
        "unroll",
        "vocab_size",
        "width",
    }
)


def check_type(model: str, option: str, value: Any, annotation: Any) -> None:
    """Raises ValueError, naming the model, option, value and the type expected, when `value` is
    not of type `annotation`."""
    if not matches(value, annotation):
        raise ValueError(
            f"model {model!r} option {option} must be {describe(annotation)}, "
            f"got {value!r} ({type(value).__name__})"
        )


def check_size(model: str, option: str, value: Any) -> None:
    """Raises ValueError, naming the model, option and value, when an option of `SIZES` is or
    holds a size below 1."""
    if option not in SIZES or all(size >= 1 for size in _ints(value)):
        return
    what = "hold sizes" if isinstance(value, tuple | list) else "be"
    raise ValueError(f"model {model!r} option {option} must {what} >= 1, got {value!r}")


def matches(value: Any, annotation: Any) -> bool:
    """Whether `value` is of type `annotation`: a class, `Any`, a union or `Optional`, a
    `Literal`, or a sequence (`Sequence[X]`, `tuple[X, ...]`, `tuple[X, Y]`) given as a tuple or
    list."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arm) for arm in args)
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if origin in (tuple, collections.abc.Sequence, list):
        return _matches_sequence(value, origin, args)
    return _matches_class(value, annotation)


def describe(annotation: Any) -> str:
    """`annotation` in words: "int", "int or None", "a tuple or list of int"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arm) for arm in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if origin in (tuple, collections.abc.Sequence, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a tuple or list ({', '.join(describe(arg) for arg in args)})"
        item = describe(args[0]) if args else "anything"
        return f"a tuple or list of {f'({item})' if ' ' in item else item}"
    return getattr(annotation, "__name__", str(annotation))


def _matches_sequence(value: Any, origin: Any, args: tuple) -> bool:
    if not isinstance(value, tuple | list):
        return False
    if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[X, Y]: one type a place
        return len(value) == len(args) and all(map(matches, value, args))
    return not args or all(matches(item, args[0]) for item in value)


def _matches_class(value: Any, cls: Any) -> bool:
    if cls is bool:
        return isinstance(value, bool | np.bool_)
    if isinstance(value, bool | np.bool_):
        return False  # True is no size, nor a rate
    if cls is int:
        return isinstance(value, numbers.Integral)
    if cls is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, cls) if isinstance(cls, type) else True


def _ints(value: Any) -> list:
    """The ints of a size option's value: itself, or the items of a sequence (nested ones too)."""
    if isinstance(value, tuple | list):
        return [size for item in value for size in _ints(item)]
    return [value] if isinstance(value, numbers.Integral) else []
