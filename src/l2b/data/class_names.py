"""Class names written as labels (a csv's, an npz's): the order they are numbered in, and names
that differ only in case or spaces."""

from __future__ import annotations

from ..console import warn


def label_order(names) -> list[str]:
    """Class names in label order: numerically where every name is a whole number ("2" before
    "10"), else alphabetically, as folder, csv and npz labels are numbered."""
    names = set(names)
    numeric = all(n.lstrip("-").isdigit() for n in names)
    return sorted(names, key=(lambda t: (int(t), t)) if numeric else str)


def warn_twin_classes(names, where) -> None:
    """Say so where two class names differ only in case or surrounding spaces ("Cat", "cat"): a
    labelling tool's export can write one class both ways, and each way is then a class of its own."""
    seen: dict[str, str] = {}
    for name in names:
        twin = seen.setdefault(str(name).strip().casefold(), str(name))
        if twin != str(name):
            warn(f"{where}: class names {twin!r} and {str(name)!r} differ only in case or spaces, so they are two "
                 f"classes; if they are one, write them alike")
            return
