"""Where samples come from: files, tar shards or Python code, read by position.

A source is anything with ``length`` (an int, or None when unbounded) and ``read(position)``
returning one sample of its task (see :mod:`.samples`). Reading by position is what makes
resume exact and data parallelism cheap: the data position of a run is one integer per task, and
each process reads only the samples of its own shard.

* :class:`JsonlSource`     one or more ``.jsonl`` files (an index of line offsets is built once)
* :class:`TarShardSource`  WebDataset-style ``.tar`` shards: members ``KEY.EXT`` grouped by KEY;
                           images (``jpg``/``jpeg``/``png``/``webp``/``bmp``), the caption or text in
                           ``txt``, a record in ``json`` (read with Python's tarfile)
* :class:`SequenceSource`  a Python list (or anything indexable) of samples or records
* :class:`FunctionSource`  ``fn(position) -> sample``: on-the-fly data (e.g. the shapes world)
* :class:`IterableSource`  any iterable; read in order, re-iterated and fast-forwarded on resume

:class:`Epochs` turns a finite source into an endless one, reshuffled every epoch from the seed.
A read may raise (a missing image, a bad line): the caller skips and counts that sample.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import InputError
from .mixture import Mixture  # noqa: F401  (re-exported: it lived here)
from .samples import FROM_RECORD, TASKS, CaptionSample, Sample, TextSample, check_sample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
PYTHON = "python:"


def sample_generator(*keys: Any) -> torch.Generator:
    """A CPU generator seeded by a stable hash of ``keys`` (e.g. seed, step, slot)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class Source(Protocol):
    task: str
    length: int | None

    def read(self, position: int) -> Sample: ...


class SequenceSource:
    def __init__(self, task: str, items: Sequence[Any]):
        self.task, self.items, self.length = task, items, len(items)

    def read(self, position: int) -> Sample:
        return check_sample(self.task, self.items[position])


class FunctionSource:
    """``fn(position)`` -> sample; must be deterministic for exact resume. ``length`` None: endless."""

    def __init__(self, task: str, fn: Callable[[int], Any], length: int | None = None):
        self.task, self.fn, self.length = task, fn, length

    def read(self, position: int) -> Sample:
        return check_sample(self.task, self.fn(position))


class IterableSource:
    """Samples in iteration order. ``iterable`` is re-iterated (it must be re-iterable, or a
    zero-argument function returning a fresh iterator) when a position before the current one is
    asked for, e.g. on resume; reaching position p then costs p reads."""

    def __init__(self, task: str, iterable: Iterable[Any] | Callable[[], Iterable[Any]], length: int | None = None):
        self.task, self.length = task, length
        self._make = iterable if callable(iterable) else (lambda: iter(iterable))
        self._iterator, self._next = None, 0

    def read(self, position: int) -> Sample:
        if self._iterator is None or position < self._next:
            self._iterator, self._next = iter(self._make()), 0
        try:
            while self._next < position:
                next(self._iterator)
                self._next += 1
            item = next(self._iterator)
        except StopIteration:
            raise InputError(f"the {self.task!r} iterable ended after {self._next} samples") from None
        self._next += 1
        return check_sample(self.task, item)


class JsonlSource:
    """Lines of jsonl files; relative image paths resolve against each file's folder."""

    def __init__(self, task: str, paths: Sequence[str | os.PathLike]):
        self.task = task
        self._index: list[tuple[Path, int]] = []
        for path in map(Path, paths):
            if not path.is_file():
                raise InputError(f"{task} data: no file {path}")
            offset = 0
            with open(path, "rb") as f:
                for line in f:
                    if line.strip():
                        self._index.append((path, offset))
                    offset += len(line)
        if not self._index:
            raise InputError(f"{task} data: no records in {[os.fspath(p) for p in paths]}")
        self.length = len(self._index)

    def read(self, position: int) -> Sample:
        path, offset = self._index[position]
        with open(path, "rb") as f:
            f.seek(offset)
            line = f.readline()
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: line at byte {offset} is not valid JSON ({e})") from None
        return FROM_RECORD[self.task](record, path.parent)


class TarShardSource:
    """WebDataset-style shards. A sample is every member sharing a key (the name up to the first
    dot of its base name): ``gen`` needs an image and a caption (``txt``, or ``json`` with
    ``caption``); ``und`` needs a ``json`` record (LLaVA or ours) and its images, in extension order;
    ``text`` a ``txt`` (or ``json`` with ``text``)."""

    def __init__(self, task: str, paths: Sequence[str | os.PathLike]):
        self.task = task
        self._index: list[tuple[Path, dict[str, tuple[int, int]]]] = []
        self.index_errors: list[str] = []
        for path in map(Path, paths):
            groups: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(path, "r:") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        folder, base = os.path.split(member.name)
                        key, _, ext = base.partition(".")
                        groups.setdefault(f"{folder}/{key}", {})[ext.lower()] = (member.offset_data, member.size)
            except (tarfile.TarError, OSError) as e:  # a truncated shard: keep what was indexed
                self.index_errors.append(f"{path}: {e}")
            self._index.extend((path, members) for members in groups.values())
        if not self._index:
            raise InputError(f"{task} data: no samples in shards {[os.fspath(p) for p in paths]} {self.index_errors}")
        self.length = len(self._index)

    def read(self, position: int) -> Sample:
        path, members = self._index[position]

        def member(ext: str) -> bytes:
            offset, size = members[ext]
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
            if len(data) != size:
                raise InputError(f"{path}: member .{ext} is truncated")
            return data

        record = json.loads(member("json")) if "json" in members else {}
        text = member("txt").decode("utf-8") if "txt" in members else None
        images = [member(ext) for ext in sorted(members) if ext in IMAGE_EXTENSIONS]
        if self.task == "gen":
            caption = text if text is not None else record.get("caption")
            if not images or not caption:
                raise InputError(f"{path}: sample without an image or a caption")
            return CaptionSample(caption.strip(), images[0])
        if self.task == "text":
            return TextSample(text if text is not None else record.get("text", ""))
        record = dict(record)
        record.pop("image", None)
        record["images"] = images
        return FROM_RECORD["und"](record)


class Epochs:
    """A finite source read endlessly: position p is item perm_e[p mod n] of epoch e = p // n, with a
    fresh permutation per epoch from (seed, epoch) when ``shuffle``; endless sources pass through."""

    def __init__(self, source: Source, seed: int, shuffle: bool = True):
        self.source, self.seed, self.shuffle = source, seed, shuffle
        self.task, self.length = source.task, None
        self._perm: tuple[int, torch.Tensor] | None = None

    def index(self, position: int) -> int:
        n = self.source.length
        if n is None:
            return position
        epoch, offset = divmod(position, n)
        if not self.shuffle:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(n, generator=sample_generator(self.seed, self.task, "epoch", epoch)))
        return int(self._perm[1][offset])

    def read(self, position: int) -> Sample:
        return self.source.read(self.index(position))


def open_source(task: str, spec: Any) -> Source:
    """A source from a config entry: a path (``.jsonl`` or ``.tar``, a glob, or a folder of shards),
    a list of paths, ``python:package.module:factory`` (``factory()`` returns one of the following),
    or a Python object: a Source, a list, a function of the position, or an iterable."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; tasks are {TASKS}")
    if isinstance(spec, list) and len(spec) == 1 and str(spec[0]).startswith(PYTHON):
        spec = spec[0]
    if isinstance(spec, str) and spec.startswith(PYTHON):
        return open_source(task, _python_object(spec)())
    if hasattr(spec, "read") and hasattr(spec, "length"):
        return spec
    if isinstance(spec, (str, os.PathLike)) or (isinstance(spec, list) and spec and
                                                 all(isinstance(s, (str, os.PathLike)) for s in spec)):
        paths = _expand_paths(spec if isinstance(spec, list) else [spec])
        tars = [p for p in paths if p.suffix == ".tar"]
        if tars and len(tars) != len(paths):
            raise InputError(f"{task} data mixes tar shards and other files: {paths}")
        return TarShardSource(task, tars) if tars else JsonlSource(task, paths)
    if callable(spec) and not isinstance(spec, Iterable):
        return FunctionSource(task, spec)
    if isinstance(spec, Sequence):
        return SequenceSource(task, spec)
    if isinstance(spec, Iterable):
        return IterableSource(task, spec)
    raise InputError(f"cannot read {task} data from {type(spec).__name__}")


def _python_object(spec: str):
    """``python:package.module:name`` -> that object (a zero-argument factory of a source)."""
    import importlib

    module, _, name = spec[len(PYTHON):].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot import {spec!r}: {e}") from None


def _expand_paths(specs: list[str | os.PathLike]) -> list[Path]:
    import glob

    paths: list[Path] = []
    for spec in map(os.fspath, specs):
        if os.path.isdir(spec):
            found = sorted(Path(spec).glob("*.tar")) or sorted(Path(spec).glob("*.jsonl"))
        elif any(c in spec for c in "*?["):
            found = [Path(p) for p in sorted(glob.glob(spec))]
        else:
            found = [Path(spec)]
        if not found:
            raise InputError(f"no data files match {spec}")
        paths.extend(found)
    return paths
