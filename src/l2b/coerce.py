"""Turning a setting's value (from YAML, a flag, ``--method-arg`` or config.json) into its declared
type, with an error naming the setting when it cannot be: the one conversion that TrainConfig and
the methods' options share."""

from __future__ import annotations

from typing import Any

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce_field(name: str, kind: str, value: Any, where: str = "config") -> Any:
    """``value`` as the field's type (``kind`` is its annotation, e.g. ``"int | None"``)."""
    optional = "None" in kind
    base = kind.replace("| None", "").strip()
    bad = f"{where}: {name}={value!r} is not "
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ValueError(bad + f"a valid {base} (this setting cannot be empty)")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in TRUE + FALSE:
            return str(value).strip().lower() in TRUE
        raise ValueError(bad + "a bool (true or false)")
    if base == "int":
        if isinstance(value, bool):
            raise ValueError(bad + "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(bad + "an integer")
    if base == "float":
        if isinstance(value, bool):
            raise ValueError(bad + "a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(bad + "a number") from None
    if base == "str":
        if isinstance(value, str):
            return value
        raise ValueError(bad + "text")
    if base == "list[int]":
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(bad + f"a list of integers (e.g. {name}: [80, 100])")
        return [coerce_field(f"{name}[{i}]", "int", v, where) for i, v in enumerate(value)]
    if base == "dict":
        if isinstance(value, dict):
            return dict(value)
        raise ValueError(bad + "a mapping of KEY: VALUE")
    return value
