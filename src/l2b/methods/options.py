"""How a method declares its options: one dataclass per method, each field with its type, its
default, a one-line help and (where the values are a fixed set) the allowed values.

Everything else is derived from that declaration: the defaults, the conversion of YAML /
``--method-arg`` / flag values to the declared type, the check of allowed values and ranges
(before any data are read), and the CLI's flags and ``--help`` text.

    @dataclass
    class MixupOptions:
        alpha: float = option(1.0, "lam ~ Beta(alpha, alpha)", check=lambda v: v > 0 or "must be > 0")
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable

from ..coerce import coerce_field


def option(default: Any, help: str, *, choices: tuple | None = None,
           check: Callable[[Any], bool | str] | None = None) -> Any:
    """A dataclass field of a method's options: ``help`` is one line; ``choices`` the allowed
    values; ``check(value)`` returns True, or False / a phrase ("must be > 0") for a bad value
    (None values are not checked: None means "the method's own default")."""
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


@dataclass(frozen=True)
class OptionSpec:
    """One declared option, as the CLI and the error messages show it."""

    name: str
    type: str  # the annotation, e.g. "float", "str | None"
    default: Any
    help: str
    choices: tuple | None

    @property
    def values(self) -> str:
        """What the option takes, for --help: its choices, or its type."""
        if self.choices:
            return " | ".join("none" if c is None else str(c) for c in self.choices)
        kind = self.type.replace(" | None", "").replace("None | ", "")
        return {"bool": "true | false"}.get(kind, kind)


class NoOptions:
    """The options of a method that takes none."""


def specs(options_cls: type) -> dict[str, OptionSpec]:
    """The declared options of a method's options dataclass, by name."""
    if options_cls is NoOptions:
        return {}
    hints = typing.get_type_hints(options_cls)
    out = {}
    for f in fields(options_cls):
        kind = f.type if isinstance(f.type, str) else _type_name(hints[f.name])
        out[f.name] = OptionSpec(f.name, kind, None if f.default is MISSING else f.default,
                                 f.metadata.get("help", ""), f.metadata.get("choices"))
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build(method: str, options_cls: type, given: dict[str, Any]):
    """The options dataclass of ``method`` from ``given`` (any of YAML, --method-arg, flags, the
    Python API): unknown names, unreadable values, values outside the choices and values that
    fail a field's check raise a ValueError naming the option, the value and the fix."""
    declared = specs(options_cls)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        valid = ", ".join(sorted(declared)) or "none"
        raise ValueError(f"method {method!r} has no option(s) {unknown}; its options: {valid}")
    if options_cls is NoOptions:
        return NoOptions()
    meta = {f.name: f.metadata for f in fields(options_cls)}
    values = {}
    for name, value in given.items():
        spec = declared[name]
        if value is not None:
            value = coerce_field(name, spec.type, value, f"method {method!r} option")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"method {method!r} option {name}={value!r} is not a finite number")
        if spec.choices is not None and value not in spec.choices:
            raise ValueError(f"method {method!r}: {name}={value!r} is not one of "
                             f"{', '.join(repr(c) for c in spec.choices)}")
        check = meta[name].get("check")
        if check is not None and value is not None:
            verdict = check(value)
            if verdict is not True:
                reason = verdict if isinstance(verdict, str) else "is out of range"
                raise ValueError(f"method {method!r} option {name}={value!r} {reason}")
        values[name] = value
    return options_cls(**values)


def as_dict(options) -> dict[str, Any]:
    """The option values by name (what config.json records as the resolved options)."""
    if isinstance(options, NoOptions):
        return {}
    return {f.name: getattr(options, f.name) for f in fields(options)}
