"""One DataLoader for a run's image files, its workers started once.

A loader's workers start at every pass over its data, unless they are kept (``persistent_workers``).
Where a worker is a fork of the run (Linux) it starts at once; where it starts as a fresh Python
process that imports torch (``spawn``: macOS, Windows; ``forkserver``), a loader for every training
epoch and every evaluation spent more time starting its workers than decoding a small set of images.
There, the passes of a run read through one kept loader (:class:`KeptReader`), whose keys name the
image, its label and its transform, so that it serves every split. Batches are the same either way:
a sample's random transforms are seeded by its key.
"""

from __future__ import annotations

import multiprocessing
import weakref

import torch

from .images import ImageFiles, KeyedImages


def costly_worker_start() -> bool:
    """Whether a loader worker starts as a fresh interpreter rather than a fork of this process."""
    return multiprocessing.get_start_method() != "fork"


class _Feed:
    """A kept loader's batch sampler: the batches of the pass being read."""

    def __init__(self) -> None:
        self.batches = iter(())

    def __iter__(self):
        return iter(self.batches)


class KeptReader:
    """A DataLoader over :class:`KeyedImages` whose workers stay between passes; one pass at a time
    (``busy`` while one is being read)."""

    def __init__(self, images: ImageFiles, workers: int) -> None:
        self.feed, self.busy = _Feed(), False
        self.loader = torch.utils.data.DataLoader(KeyedImages(images), batch_sampler=self.feed, num_workers=workers,
                                                  persistent_workers=True, pin_memory=torch.cuda.is_available())

    def read(self, batches):
        """(x, y, positions) of ``batches`` (lists of keys of :class:`KeyedImages`), read as they come."""
        self.busy, self.feed.batches = True, iter(batches)
        try:
            yield from self.loader
        finally:  # a pass left early: the next one discards what the workers had read ahead
            self.busy, self.feed.batches = False, iter(())

    def close(self) -> None:
        """Stop the workers now (dropping the loader ends its iterator, which shuts them down)."""
        self.loader = None


_READERS: dict[tuple[int, int], KeptReader] = {}


def kept_reader(ds, workers: int) -> KeptReader:
    """The kept reader of the image-file dataset ``ds`` (a :class:`l2b.data.files.FileDataset`) with
    ``workers`` workers, made at the first pass; it lives as long as ``ds`` or until
    :func:`close_readers`."""
    key = (id(ds), workers)
    if key not in _READERS:
        images = ImageFiles([], ds.image_size, train=False, transform=ds.transform, mean=ds.mean, std=ds.std,
                            own_photos=ds.own_photos)
        _READERS[key] = KeptReader(images, workers)
        weakref.finalize(ds, _drop, key)
    return _READERS[key]


def close_readers(ds) -> None:
    """Stop the workers of ``ds``'s kept readers (as a run ends)."""
    for key in [k for k in _READERS if k[0] == id(ds)]:
        _drop(key)


def _drop(key) -> None:
    reader = _READERS.pop(key, None)
    if reader is not None:
        reader.close()
