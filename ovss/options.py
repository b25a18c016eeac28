"""Method options: declared once, as typed keyword-only constructor arguments, checked the same way
for the API, the CLI, ``ovss eval --set`` and the web page.

Every option of a method is a keyword parameter of its ``__init__`` with a type annotation and a
default (``**common`` passes on to :class:`ovss.segmenter.Segmenter`). Numeric ranges are declared in
the annotation with :class:`Range` (``Annotated[float, Range(0, 1)]``, or the aliases below), so a value
of the wrong type or out of range is a one-line :class:`~ovss.errors.InputError` before any weights load.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Callable as AbcCallable
from collections.abc import Mapping as AbcMapping
from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from .errors import InputError, did_you_mean


@dataclass(frozen=True)
class Range:
    """Allowed numeric interval of an option (bounds inclusive unless ``*_open``; None: unbounded).
    NaN and infinities are always refused."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, name: str, v: float) -> None:
        bad = not math.isfinite(v)
        if self.lo is not None:
            bad |= v <= self.lo if self.lo_open else v < self.lo
        if self.hi is not None:
            bad |= v >= self.hi if self.hi_open else v > self.hi
        if bad:
            raise InputError(f"{name} must be {self.describe()}, got {v!r}")

    def describe(self) -> str:
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "a finite number " + " and ".join(s for s in (lo, hi) if s) if (lo or hi) else "a finite number"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


#: pixels (a size or a count): an integer >= 1
Pixels = Annotated[int, Range(1)]
#: a count that may be zero (iterations, steps)
Count = Annotated[int, Range(0)]
#: a positive integer (batch size, layer number)
PositiveInt = Annotated[int, Range(1)]
#: a probability or a fraction in [0, 1]
Fraction = Annotated[float, Range(0, 1)]
#: a finite number > 0 (temperatures, scales, standard deviations)
Positive = Annotated[float, Range(0, lo_open=True)]
#: a finite number >= 0
NonNegative = Annotated[float, Range(0)]
#: arithmetic precision of the network
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its name, annotation (resolved), default and declared range."""

    name: str
    annotation: Any
    default: Any
    owner: str  # the class whose __init__ declares it

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def is_flag(self) -> bool:
        """A boolean option (``--panoptic`` on the command line needs no value)."""
        return _strip(self.annotation)[0] is bool or isinstance(self.default, bool)

    @property
    def choices(self) -> tuple[Any, ...] | None:
        base, _ = _strip(self.annotation)
        for member in _members(base):
            if typing.get_origin(member) is Literal:
                return typing.get_args(member)
        return None

    def describe(self) -> str:
        """The type in words, for ``ovss methods NAME``."""
        base, rng = _strip(self.annotation)
        text = _type_words(base)
        return f"{text} ({rng.describe()})" if rng is not None else text


def _strip(annotation: Any) -> tuple[Any, Range | None]:
    """Annotated[T, Range] -> (T, Range); also through Optional/Union members."""
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        rng = next((m for m in meta if isinstance(m, Range)), None)
        return base, rng
    if _is_union(annotation):
        ranges = [r for _, r in (_strip(m) for m in typing.get_args(annotation)) if r is not None]
        members = [_strip(m)[0] for m in typing.get_args(annotation)]
        return Union[tuple(members)], (ranges[0] if ranges else None)  # type: ignore[return-value]
    return annotation, None


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (Union, types.UnionType)


def _members(t: Any) -> tuple[Any, ...]:
    return typing.get_args(t) if _is_union(t) else (t,)


def _type_words(t: Any) -> str:
    if _is_union(t):
        return " or ".join(_type_words(m) for m in typing.get_args(t))
    if t is type(None):
        return "none"
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if origin in (list, tuple, AbcSequence):
        args = [a for a in typing.get_args(t) if a is not Ellipsis]
        return f"list of {_type_words(args[0]) if args else 'values'}"
    if origin in (dict, AbcMapping):
        return "mapping"
    if origin is AbcCallable or t is AbcCallable:
        return "callable"
    return getattr(t, "__name__", str(t))


@functools.lru_cache(maxsize=None)
def option_specs(cls: type) -> dict[str, OptionSpec]:
    """Every keyword option of ``cls``'s constructor, following ``**kwargs`` up the base classes
    (subclass declarations win), with resolved annotations.

    Raises:
        TypeError: an option without a type annotation (a method that breaks the contract).
    """
    specs: dict[str, OptionSpec] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        hints = typing.get_type_hints(init, include_extras=True)
        params = list(inspect.signature(init).parameters.values())
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                if p.name not in hints:
                    raise TypeError(f"{klass.__name__}.__init__ option {p.name!r} has no type annotation")
                specs.setdefault(p.name, OptionSpec(p.name, hints[p.name], p.default, klass.__name__))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return specs


def check_options(method: str, specs: dict[str, OptionSpec], values: dict[str, Any], *,
                  from_text: bool = False) -> dict[str, Any]:
    """Validate and convert option values against their declarations.

    Args:
        method: method name (for messages).
        specs: :func:`option_specs` of the method's class.
        values: option name -> value.
        from_text: values are strings typed by a person (command line, ``--set``, web page): they are
            parsed by the declared type ("5" -> 5, "8,16" -> (8, 16), "none" -> None, "false" -> False).

    Returns:
        The converted values.

    Raises:
        InputError: an unknown option (with the nearest name), a value of the wrong type, out of its
            declared range, or not one of its choices.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in specs:
            flag = key.replace("_", "-")
            known = sorted(n.replace("_", "-") for n in specs)
            raise InputError(f"{method} has no option {key!r} (--{flag}).{did_you_mean(flag, known)} "
                             f"Its options: {', '.join(known)}")
        spec = specs[key]
        base, rng = _strip(spec.annotation)
        out[key] = _convert(key, base, rng, value, from_text)
    return out


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
NONE_WORDS = ("none", "null")


def _convert(name: str, t: Any, rng: Range | None, value: Any, text: bool) -> Any:
    try:
        v = _coerce(t, value, text)
    except _Mismatch:
        choices = [str(c) for m in _members(t) if typing.get_origin(m) is Literal for c in typing.get_args(m)]
        hint = did_you_mean(value, choices) if isinstance(value, str) and choices else ""
        raise InputError(f"{name} must be {_type_words(t)}, got {value!r}.{hint}") from None
    if rng is not None:
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                rng.check(name, float(x))
    return v


class _Mismatch(Exception):
    pass


def _coerce(t: Any, v: Any, text: bool) -> Any:
    if t is Any or t is inspect.Parameter.empty:
        return v
    if typing.get_origin(t) is Annotated:  # a declared range inside a list or union
        base, rng = _strip(t)
        out = _coerce(base, v, text)
        if rng is not None and isinstance(out, (int, float)) and not isinstance(out, bool):
            try:
                rng.check("value", float(out))
            except InputError:
                raise _Mismatch from None
        return out
    if _is_union(t):
        members = typing.get_args(t)
        if v is None and type(None) in members:
            return None
        if text and isinstance(v, str) and v.strip().lower() in NONE_WORDS and type(None) in members:
            return None
        # exact kinds first, so "5" for int | str stays 5 only where int comes first
        for m in members:
            if m is type(None):
                continue
            try:
                return _coerce(m, v, text)
            except _Mismatch:
                continue
        raise _Mismatch
    if t is type(None):
        if v is None:
            return None
        raise _Mismatch
    origin = typing.get_origin(t)
    if origin is Literal:
        if v in typing.get_args(t):
            return v
        raise _Mismatch
    if t is bool:
        if isinstance(v, bool):
            return v
        if text and isinstance(v, str) and v.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return v.strip().lower() in TRUE_WORDS
        raise _Mismatch
    if t is int:
        if isinstance(v, bool):
            raise _Mismatch
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if text and isinstance(v, str):
            try:
                return int(v.strip())
            except ValueError:
                raise _Mismatch from None
        if hasattr(v, "__index__"):  # numpy integers
            return int(v)
        raise _Mismatch
    if t is float:
        if isinstance(v, bool):
            raise _Mismatch
        if isinstance(v, (int, float)) or (hasattr(v, "__float__") and not isinstance(v, str)):
            return float(v)
        if text and isinstance(v, str):
            try:
                return float(v.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if t is str:
        if isinstance(v, str):
            return v
        if isinstance(v, Path):
            return str(v)
        raise _Mismatch
    if t is Path:
        if isinstance(v, (str, Path)):
            return Path(v)
        raise _Mismatch
    if origin in (list, tuple, AbcSequence):
        args = [a for a in typing.get_args(t) if a is not Ellipsis]
        item = args[0] if args else Any
        if text and isinstance(v, str):
            parts = [p.strip() for p in v.split(",") if p.strip()]
            return tuple(_coerce(item, p, True) for p in parts)
        if isinstance(v, (list, tuple)):
            return tuple(_coerce(item, x, text) for x in v)
        if item in (int, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
            return (_coerce(item, v, text),)  # a single number for a list option
        raise _Mismatch
    if origin in (dict, AbcMapping) or t in (dict, AbcMapping):
        if isinstance(v, AbcMapping):
            return dict(v)
        raise _Mismatch
    if origin is AbcCallable or t is AbcCallable:
        if callable(v) and not isinstance(v, (str, type)):
            return v
        raise _Mismatch
    if isinstance(t, type):
        if isinstance(v, t):
            return v
        if t.__module__.startswith("torch") and isinstance(v, str):  # torch.device given as "cuda:0"
            return v
        raise _Mismatch
    return v


def parse_option_tokens(args: list[str]) -> dict[str, str]:
    """``["--proxy-model", "x", "--residual", "false"]`` -> ``{"proxy_model": "x", "residual": "false"}``
    (a ``--flag`` without value is ``"true"``).

    Raises:
        InputError: an item that is not ``--name value`` / ``--name=value`` / ``--flag``.
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) < 3:
            raise InputError(f"unexpected argument {a!r}; method options go as --name value")
        if "=" in a:
            key, value = a[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = a[2:], args[i + 1]
            i += 2
        else:
            key, value = a[2:], "true"
            i += 1
        out[key.replace("-", "_")] = value
    return out


def parse_key_values(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """``["prob_threshold=0.3", "model=ViT-B-16"]`` -> ``{"prob_threshold": 0.3, "model": "ViT-B-16"}``:
    values are JSON where they parse as JSON, strings otherwise; ``-`` in keys becomes ``_``
    (``ovss eval --set``, ``ovss train --eval-set``).

    Raises:
        InputError: an item without ``=`` (the message names ``flag``).
    """
    import json

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out
