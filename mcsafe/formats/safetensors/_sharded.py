"""Hugging Face sharded checkpoints: a ``*.safetensors.index.json`` whose
``weight_map`` names, for each tensor, the shard file (beside the index) that holds
it. A shard that cannot be opened, or a tensor that cannot be read, fails with an
error naming the shard and the tensor; every other tensor still loads."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

from ._header import SafetensorsError
from ._open import SafeSlice, TensorNotFound, safe_open


class ShardedCheckpoint:
    """The tensors of a sharded checkpoint, with safe_open's methods: ``keys()``
    (sorted), ``metadata()`` (the index's, or None), ``get_tensor``, ``get_tensors``,
    ``get_slice``, ``in``, ``len``, iteration; ``shards()`` and ``shard_of(name)``
    say where tensors live. Shards are opened when first needed and closed by
    close() (or the end of a ``with`` block).

    The index must be a JSON object whose ``weight_map`` maps tensor names to shard
    file names; those names are relative to the index's folder and may not leave it
    (no absolute paths, no ``..``). The weight map is the checkpoint: a shard's
    tensors that it does not name are not part of it."""

    def __init__(self, index: str | os.PathLike[str], framework: str = "numpy",
                 device: str | int | None = "cpu") -> None:
        self.path = os.fsdecode(os.fspath(index))
        self._framework, self._device = framework, device
        self._metadata, self._map = _read_index(self.path)
        self._folder = os.path.dirname(os.path.abspath(self.path))
        self._open: dict[str, safe_open] = {}
        self._keys = sorted(self._map)
        self._by_file: dict[str, list[str]] = {}
        for name, file in self._map.items():
            self._by_file.setdefault(file, []).append(name)

    def __enter__(self) -> ShardedCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        opened, self._open = self._open, {}
        for shard in opened.values():
            shard.close()

    def __repr__(self) -> str:
        return (f"<ShardedCheckpoint {self.path!r}: {len(self._map)} tensors in "
                f"{len(self._by_file)} shards>")

    def keys(self) -> list[str]:
        return list(self._keys)

    def metadata(self) -> dict[str, Any] | None:
        return None if self._metadata is None else dict(self._metadata)

    def shards(self) -> list[str]:
        """The shard files' paths, sorted."""
        return sorted(self._shard_path(f) for f in self._by_file)

    def shard_of(self, name: str) -> str:
        """The path of the shard that holds the tensor."""
        return self._shard_path(self._file(name))

    def __contains__(self, name: object) -> bool:
        return name in self._map

    def __len__(self) -> int:
        return len(self._map)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get_tensor(self, name: str) -> Any:
        return self._shard(name).get_tensor(name)

    def get_slice(self, name: str) -> SafeSlice:
        return self._shard(name).get_slice(name)

    def get_tensors(self) -> dict[str, Any]:
        """Every tensor of the weight map, shard by shard, each shard's in the order
        of its data."""
        out = {}
        for file in sorted(self._by_file):
            names = self._by_file[file]
            shard = self._shard(names[0])
            for name in names:
                if name not in shard:
                    self._missing(name, shard)
            wanted = set(names)
            for name in shard.offset_keys():
                if name in wanted:
                    out[name] = shard.get_tensor(name)
        return out

    def _file(self, name: str) -> str:
        try:
            return self._map[name]
        except (KeyError, TypeError):
            raise TensorNotFound(f"{self.path}: the weight map has no tensor {name!r}"
                                 ) from None

    def _shard_path(self, file: str) -> str:
        return os.path.join(self._folder, file)

    def _shard(self, name: str) -> safe_open:
        file = self._file(name)
        shard = self._open.get(file)
        if shard is None:
            path = self._shard_path(file)
            why = f"shard {file!r} of tensor {name!r} in {self.path}"
            try:
                shard = safe_open(path, self._framework, self._device)
            except SafetensorsError as exc:
                raise SafetensorsError(f"{exc} ({why})") from None
            except OSError as exc:
                raise type(exc)(exc.errno, f"{exc.strerror} ({why})", exc.filename) from None
            self._open[file] = shard
        if name not in shard:
            self._missing(name, shard)
        return shard

    def _missing(self, name: str, shard: safe_open) -> None:
        raise TensorNotFound(f"{shard.path}: no tensor {name!r}, which {self.path} maps "
                             "to this shard")


def open_sharded(index: str | os.PathLike[str], framework: str = "numpy",
                 device: str | int | None = "cpu") -> ShardedCheckpoint:
    """A sharded checkpoint, by its ``*.safetensors.index.json``, to read tensor by
    tensor (see ShardedCheckpoint)."""
    return ShardedCheckpoint(index, framework, device)


def load_sharded(index: str | os.PathLike[str], device: str | int | None = "cpu", *,
                 framework: str = "numpy") -> dict[str, Any]:
    """The whole state dict of a sharded checkpoint, by its
    ``*.safetensors.index.json``: every tensor of its weight map. The first tensor
    that cannot be read raises, naming its shard and itself; open_sharded() reads
    the others."""
    with ShardedCheckpoint(index, framework, device) as checkpoint:
        return checkpoint.get_tensors()


def _read_index(path: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
    def bad(why: str) -> SafetensorsError:
        return SafetensorsError(f"{path}: not a safetensors index: {why}")

    with open(path, "rb") as f:
        raw = f.read()
    try:
        index = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not JSON ({str(exc).splitlines()[0][:200] if str(exc) else exc!r})"
                  ) from None
    if not isinstance(index, dict):
        raise bad("not a JSON object")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise bad("no weight_map object")
    for name, file in weight_map.items():
        if not isinstance(file, str) or not file:
            raise bad(f"tensor {name!r} maps to {file!r}, not a file name")
        parts = file.replace("\\", "/").split("/")
        if os.path.isabs(file) or ".." in parts or "\0" in file:
            raise bad(f"tensor {name!r} maps to {file!r}, outside the index's folder")
    metadata = index.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad(f"metadata is {type(metadata).__name__}, not an object")
    return metadata, weight_map
