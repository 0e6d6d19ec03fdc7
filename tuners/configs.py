"""Tuner configs from and to plain values: strict YAML, the ``key=value`` override parser, type coercion.

``make_config`` builds a config class from plain values (a preset, a YAML file, command-line overrides), with
errors that name the bad key or value; ``config_dict`` turns a config back into JSON-able values.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from objectives.errors import ConfigError, did_you_mean
from objectives.problem import ProblemConfig


class DuplicateKeyError(yaml.YAMLError):
    """A YAML table gives one key twice; plain YAML loading would keep the last one without a word."""

    def __init__(self, key: Any, lines: tuple[int, int]) -> None:
        self.key, self.lines = key, lines
        super().__init__(
            f"key {key!r} is given twice in one table (lines {lines[0]} and {lines[1]}); YAML would keep only the "
            "last one: remove one of them"
        )


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one table (``DuplicateKeyError``)."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen and key != "<<":  # `<<` merges a table in; repeating it is YAML's own business
                raise DuplicateKeyError(key, (seen[key], line))
            seen[key] = line
        except TypeError:  # an unhashable key: construct_mapping names it below
            pass
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, except that a key given twice in one table raises ``DuplicateKeyError``."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain values only


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` → dict, values read as YAML (``3``, ``0.1``, ``null``, ``[" a", " b"]``).

    Unquoted text is kept exactly as typed: YAML would strip ``prompt_text= It was`` to ``"It was"``, and the
    leading space is part of the prompt (another token under BPE). A key given by two pairs keeps the later value,
    on purpose, as a repeated flag does (a script's command line can be extended to override it); a key given
    twice inside one value (``problem={k_shot: 2, k_shot: 4}``) is an error.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, raw = pair.split("=", 1)
        try:
            value = load_yaml(raw) if raw.strip() else ""
            if isinstance(value, str) and raw.strip()[:1] not in ("'", '"'):
                value = raw
            out[key.strip()] = value
        except DuplicateKeyError as err:
            raise ConfigError(
                f"override {pair!r} gives key {err.key!r} twice; YAML would keep the last: remove one"
            ) from err
        except yaml.YAMLError as err:
            where = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(
                f"override {pair!r}: the value is not valid YAML ({where}); quote text values, e.g. "
                f"{key.strip()}='\"...\"', and write lists as [a, b]"
            ) from err
    return out


def make_config(cls: type[ProblemConfig], values: Mapping[str, Any]) -> ProblemConfig:
    """Build ``cls`` from plain values, with clear errors for unknown keys and wrongly typed values."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(did_you_mean(f"config key for {cls.__name__}", key, sorted(fields)))
        kwargs[key] = coerce(key, value, typing.get_type_hints(cls)[key])
    return cls(**kwargs)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint; ints are accepted for floats, lists for tuples.

    Floats must be finite: a NaN weight or learning rate would only show up as NaN results much later.
    """
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key}=None is not allowed; expected {_type_name(hint)}")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            # YAML 1.1 reads 1e-3 (no dot) as text; a float field can only have meant the number.
            if isinstance(value, str) and not _FLOAT.fullmatch(value.strip()):
                if _NONFINITE.fullmatch(value.strip()) and str not in options:
                    # `lr=nan` (YAML's own spelling is `.nan`) is a number, just not a usable one.
                    raise ConfigError(f"{key}={value!r} must be a finite number")
                continue
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key}={value!r} must be a finite number")
            return number
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if typing.get_origin(option) is dict and isinstance(value, Mapping):
            return dict(value)
    hint_text = ""
    if str in options and not isinstance(value, str):
        # `--set init_text= My rating: the film is` reads as the YAML mapping {'My rating': 'the film is'}.
        hint_text = f"; if you meant text, quote it: {key}='\"...\"'"
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(hint)}{hint_text}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NONFINITE = re.compile(r"[-+]?\.?(nan|inf|infinity)", re.IGNORECASE)


def _type_name(hint: Any) -> str:
    # `float`, not `<class 'float'>`; unions and generics print as written (`int | None`, `tuple[str, ...]`).
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint).replace("typing.", "")


def config_dict(config: ProblemConfig) -> dict[str, Any]:
    """A config as plain JSON-able values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
