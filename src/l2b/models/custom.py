"""Your own architecture: ``--model MODULE:FUNCTION`` or ``--model FILE.py:FUNCTION``.

The function (or class) builds the model; l2b calls it with ``num_classes=`` and, where it takes
them, ``in_channels=``, ``image_size=`` and ``width=`` (``--width``), as it calls its own models.
A run records where the builder came from (config.json ``model_source``: the file, the directory
its module was imported from, the file's SHA-256) and keeps a copy of that file
(``model_source.py``), so that resuming, ``l2b predict`` and ``l2b label-issues`` build the same
architecture from another working directory, and say so when the file changed since. The copy is
never imported: a run directory from elsewhere runs no code of its own.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

COPY_NAME = "model_source.py"
FILE_MODULE = "l2b_model_"  # the module names l2b gives the files it imports from FILE.py:FUNCTION specs
_ATTR = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_OFFERED = ("num_classes", "in_channels", "image_size", "width")


def is_custom(name: str) -> bool:
    """A builder of one's own (``where:name``), not a registered model's name."""
    return ":" in name


def split_spec(spec: str) -> tuple[str, str]:
    """``(module or file, attribute)`` of ``MODULE:FUNCTION`` / ``FILE.py:FUNCTION``; a one-line
    error for anything else."""
    where, _, attr = spec.rpartition(":")
    if not where or not _ATTR.match(attr):
        raise ValueError(f"model {spec}: give a registered model's name or your own builder as MODULE:FUNCTION "
                         f"(e.g. mymodels:build) or FILE.py:FUNCTION (e.g. models/net.py:Net)")
    return where, attr


def spec_of(builder: Callable[..., nn.Module]) -> str:
    """The ``MODULE:NAME`` that imports ``builder`` again in another process (a resumed run, a
    grid's worker, ``l2b predict``); a TypeError where nothing could."""
    module, name = getattr(builder, "__module__", None), getattr(builder, "__qualname__", None)
    remedy = ("define it at the top level of a module file (e.g. mymodels.py beside your notebook or script) and "
              "pass the function imported from there, or its name: model='mymodels.py:build'")
    if not module or not name or "<" in name:
        raise TypeError(f"model={builder!r}: a lambda, a function defined inside another or a built object cannot "
                        f"be imported again to resume the run or to load its model; {remedy}")
    if module == "__main__":
        raise TypeError(f"model={name}: it is defined in the script or notebook that runs l2b (__main__), which "
                        f"another process cannot import to resume the run, load its model or train a grid's cells; "
                        f"{remedy}")
    if module.startswith(FILE_MODULE):  # imported by l2b from a FILE.py:FUNCTION spec
        return f"{inspect.getsourcefile(builder)}:{name}"
    return f"{module}:{name}"


@contextmanager
def _on_path(entries: list[str]):
    added = [e for e in dict.fromkeys(entries) if e and e not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


def _run_module_code(spec: str, load: Callable[[], Any], where: str | None = None, roots: tuple[str, ...] = (),
                     kept: str = ""):
    """``load()`` (an import), its faults as one line naming the builder: a module not found, a
    syntax error by file and line, a package the module imports that is not installed."""
    try:
        return load()
    except SyntaxError as err:
        raise ValueError(f"model {spec}: {err.filename}, line {err.lineno}: {err.msg}") from None
    except ModuleNotFoundError as err:
        if where and err.name and (where == err.name or where.startswith(f"{err.name}.")):
            looked = ", ".join([os.getcwd(), *roots])
            raise ValueError(f"model {spec}: no module {where!r} here (looked in {looked} and the installed "
                             f"packages); run from the folder that holds it, install it, or name its file: "
                             f"path/to/{where.split('.')[-1]}.py:{spec.rpartition(':')[2]}{kept}") from None
        raise ImportError(f"model {spec}: importing it needs {err.name!r}, which is not installed here "
                          f"({err})") from None


def _import_file(spec: str, path: Path):
    """The module of a ``.py`` file, imported once per content (its folder on ``sys.path`` while it
    runs, for its own imports)."""
    data = path.read_bytes()
    name = FILE_MODULE + hashlib.sha256(str(path.resolve()).encode() + b"\0" + data).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    found = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up here
    try:
        with _on_path([str(path.resolve().parent)]):
            _run_module_code(spec, lambda: found.loader.exec_module(module))
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(spec: str, where: str, roots: list[str], kept: str):
    with _on_path([os.getcwd(), *roots]):
        return _run_module_code(spec, lambda: importlib.import_module(where), where, tuple(roots), kept)


def _kept(recorded: dict) -> str:
    """Where a run's builder was, and its copy, for an error that cannot find it now."""
    if not recorded.get("file"):
        return ""
    return (f"; the run trained with {recorded['file']} and keeps a copy of it ({COPY_NAME} in the run's "
            f"directory) to put back")


def load_builder(spec: str, recorded: dict | None = None) -> Callable[..., nn.Module]:
    """The builder ``spec`` names. ``recorded``: the run's ``model_source`` record (config.json),
    whose file path and import root are tried where the spec, read from here, finds nothing (the
    run trained in another working directory)."""
    where, attr = split_spec(spec)
    recorded = recorded or {}
    if where.endswith(".py"):
        candidates = [Path(where)] + ([Path(recorded["file"])] if recorded.get("file") else [])
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"model {spec}: {where} not found (from {os.getcwd()}){_kept(recorded)}")
        module = _import_file(spec, path)
    else:
        module = _import_module(spec, where, [recorded["root"]] if recorded.get("root") else [], _kept(recorded))
    builder = module
    for part in attr.split("."):
        if not hasattr(builder, part):
            defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                             and getattr(v, "__module__", None) == module.__name__)
            raise ValueError(f"model {spec}: {where} has no {attr!r}" +
                             (f"; it defines {', '.join(defined)}" if defined else ""))
        builder = getattr(builder, part)
    if not callable(builder):
        raise ValueError(f"model {spec}: {attr} is a {type(builder).__name__}, not a function or class that builds "
                         f"the model")
    return builder


def build(spec: str, *, num_classes: int, in_channels: int, image_size: int, width: int | None,
          recorded: dict | None = None) -> nn.Module:
    """Call the builder with the arguments it takes among ``num_classes`` (required),
    ``in_channels``, ``image_size`` and ``width``; a one-line error for a builder l2b cannot call
    or that returns no ``nn.Module``."""
    builder = load_builder(spec, recorded)
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, "width": width}
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin without a signature: offer what it must take
        params = None
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        given = dict(offered)
    else:
        given = {k: v for k, v in offered.items() if k in params}
        need = [n for n, p in params.items() if p.default is p.empty and n not in given
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if "num_classes" not in given:
            raise ValueError(f"model {spec}: it takes no num_classes ({_signature(builder)}); l2b calls it with "
                             f"num_classes= and, where it takes them, {', '.join(_OFFERED[1:])}=")
        if need:
            raise ValueError(f"model {spec}: it needs {', '.join(need)} ({_signature(builder)}), which l2b does not "
                             f"give; give them defaults (l2b gives {', '.join(_OFFERED)})")
    if width is None:
        given.pop("width", None)  # the builder's own default
    elif "width" not in given:
        raise ValueError(f"model {spec}: it takes no width ({_signature(builder)}); drop --width or give it a width "
                         f"parameter")
    model = builder(**given)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _signature(builder) -> str:
    try:
        return f"{getattr(builder, '__name__', 'it')}{inspect.signature(builder)}"
    except (TypeError, ValueError):
        return getattr(builder, "__name__", repr(builder))


def check_output(model: nn.Module, spec: str, shape: tuple[int, ...], num_classes: int,
                 device: torch.device | str = "cpu") -> None:
    """One forward of two blank inputs of the data's shape, in eval mode (no statistics move, no
    random numbers are drawn): the model must give one logit per class. A one-line error
    otherwise, before any training."""
    from . import eval_mode

    what = "×".join(str(s) for s in shape)
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(torch.zeros(2, *shape, device=device))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"model {spec}: the model fails on this data's inputs (a batch of {what}): {first}; "
                         f"build it for in_channels and image_size, which l2b passes where the builder takes them"
                         ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model {spec}: gives {got} for a batch of 2 inputs of {what}; l2b needs a tensor of "
                         f"(2, {num_classes}): one logit per class (the data has {num_classes} classes)")


def _source(builder) -> tuple[Path | None, bytes | None]:
    """The builder's source file and its bytes (None, None where it has no Python source)."""
    try:
        file = inspect.getsourcefile(builder) or inspect.getsourcefile(inspect.getmodule(builder))
    except TypeError:
        return None, None
    return (Path(file), Path(file).read_bytes()) if file and Path(file).is_file() else (None, None)


def source_record(spec: str) -> tuple[dict[str, Any], bytes | None]:
    """config.json's ``model_source`` for a new run, and the bytes of the builder's source file
    (kept in the run directory as ``model_source.py``; None where it has no Python source)."""
    builder = load_builder(spec)
    file, data = _source(builder)
    name = getattr(inspect.getmodule(builder), "__name__", "")
    root = None
    if file and name and not name.startswith(FILE_MODULE):  # the folder the module's package hangs from
        root = file.resolve().parent
        for _ in range(name.count(".") + (file.name == "__init__.py")):
            root = root.parent
    record = {"spec": spec, "file": str(file.resolve()) if file else None,
              "root": None if root is None else str(root),
              "sha256": hashlib.sha256(data).hexdigest() if data is not None else None}
    return record, data


def check_outside(spec: str, recorded: dict | None, run: Path) -> None:
    """Refuse, before anything is imported, a builder that a run's own directory would supply: the
    spec's file, the recorded file or import folder, or the module the spec names as found from
    here. A run directory is data (its copy of the builder's file included): one from elsewhere,
    whose config.json could name anything, runs no code of its own."""
    home = Path(run).resolve()
    where, _ = split_spec(spec)
    recorded = recorded or {}
    roots = [recorded["root"]] if recorded.get("root") else []
    places = [Path(p) for p in (recorded.get("file"), *roots) if p]
    if where.endswith(".py"):
        places.append(Path(where))
    else:
        with _on_path([os.getcwd(), *roots]):
            try:
                found = importlib.util.find_spec(where.split(".")[0])  # finders only: no code runs
            except (ImportError, ValueError):
                found = None
        if found is not None:
            places += [Path(found.origin)] if found.origin else []
            places += [Path(p) for p in (found.submodule_search_locations or [])]
    for place in places:
        if place.resolve() == home or home in place.resolve().parents:
            raise ValueError(f"model {spec}: the run's config.json has it built by {place}, inside the run "
                             f"directory {run}; l2b imports no code from a run directory (it may come from "
                             f"anyone): put the builder's file outside it (e.g. copy {COPY_NAME} out after "
                             f"reading it) and give the run's data as usual")


def changed_source(spec: str, recorded: dict | None, run: Path) -> str | None:
    """A one-line note where the builder's source file differs from the one the run trained with
    (None when it is the same, or when the run has no record of it)."""
    if not recorded or not recorded.get("sha256"):
        return None
    file, data = _source(load_builder(spec, recorded))
    if data is None or hashlib.sha256(data).hexdigest() == recorded["sha256"]:
        return None
    return (f"model {spec}: {file} changed since the run trained; the model is built by the file as it is now "
            f"(the run keeps the one it trained with: {run / COPY_NAME})")
