"""The command line's flags: one per TrainConfig field and one per method option, read into their
types; the table of every method's options (``l2b options``)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from .config import TrainConfig
from .methods import METHODS, declared_options


def _parse_value(f, text: str) -> Any:
    """Turn a flag's text into the config field's type; 'none' clears an optional field."""
    kind = str(f.type)
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    if kind.startswith("dict"):  # --method-arg KEY=VALUE
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--{f.name.replace('_', '-')}: expected KEY=VALUE, got {text!r}")
        for cast in (int, float):
            try:
                return {key: cast(value)}
            except ValueError:
                pass
        return {key: None if value.lower() in ("none", "null") else value}
    try:
        if kind.startswith("list"):
            return [int(v) for v in text.split(",") if v.strip()]
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--{f.name.replace('_', '-')}: cannot read {text!r} as {kind}") from None
    return text


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field; unset flags stay absent so a config file can fill them."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default == "auto" else getattr(defaults, f.name)
        text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            text += " [" + " | ".join(f.metadata["choices"]) + "]"
        if f.name == "method":
            text += ": " + ", ".join(sorted(METHODS))
        help_text = (text if "default" in text else f"{text} (default: {default})").replace("%", "%%")
        if f.name == "method_args":
            parser.add_argument("--method-arg", dest=f.name, action="append", default=argparse.SUPPRESS,
                                type=lambda t, f=f: _parse_value(f, t), metavar="KEY=VALUE",
                                help="an option of the method, e.g. --method-arg lam=0.5, or of one method of a grid: "
                                     "--method-arg coteaching.forget_rate=0.36 (repeatable)")
            continue
        if f.type in ("bool", bool, "bool | None"):
            parser.add_argument(flag, dest=f.name, nargs="?", const="true", default=argparse.SUPPRESS,
                                type=lambda t, f=f: _parse_value(f, t), help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                                type=lambda t, f=f: _parse_value(f, t), metavar=f.name.upper(), help=help_text)


OPTION_DEST = "option:"  # argparse dest prefix of the methods' option flags


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option name that any method declares (l2b.methods.options), with each
    declaring method's values, default and help; the value is converted to the type the run's
    method declares."""
    group = parser.add_argument_group(
        "method options", "declared by each method (docs/methods.md); also --method-arg KEY=VALUE or a "
                          "METHOD.KEY entry under method_args: in a YAML file")
    for name, owners in sorted(declared_options().items()):
        same: dict[tuple, list[str]] = {}  # methods that declare the option alike share one entry
        for method, spec in owners.items():
            default = "none" if spec.default is None else spec.default
            same.setdefault((spec.help, spec.values, str(default)), []).append(method)
        parts = [f"{', '.join(ms)}: {h} [{v}; default {d}]" for (h, v, d), ms in same.items()]
        kinds = {spec.type for spec in owners.values()}
        boolean = kinds <= {"bool", "bool | None"}
        parser_kw = dict(nargs="?", const="true") if boolean else dict(metavar="VALUE")
        group.add_argument("--" + name.replace("_", "-"), dest=OPTION_DEST + name, default=argparse.SUPPRESS,
                           help="; ".join(parts).replace("%", "%%"), **parser_kw)


def option_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given as flags, by option name."""
    return {k[len(OPTION_DEST):]: v for k, v in vars(args).items() if k.startswith(OPTION_DEST)}


def options_table(methods: list[str] | None = None) -> str:
    """A Markdown table of every method's declared options (docs/methods.md holds this table)."""
    lines = ["| method | option | values | default | what it does |", "|---|---|---|---|---|"]
    for method in methods or sorted(METHODS):
        declared = METHODS[method].option_specs()
        if not declared:
            lines.append(f"| `{method}` | — | | | takes no options |")
        for name, spec in declared.items():
            default = "none" if spec.default is None else spec.default
            values, text = (t.replace("|", "\\|") for t in (spec.values, spec.help))
            lines.append(f"| `{method}` | `--{name.replace('_', '-')}` | {values} | `{default}` | {text} |")
    return "\n".join(lines) + "\n"
