"""One decode per image per export chunk (FKD's amortisation).

The export renders the clean image and V views of every sample of a chunk; decoding the file
again for each of them made decoding the export's cost. `ChunkImages` decodes each of the
chunk's files once, in background threads (PIL releases the GIL while it decodes and resizes),
so the next chunk decodes while the teachers run on this one, and serves the clean images
(`load`) and the full-resolution originals that `rrc` crops (`load_original`) from that decode.
Files outside the chunk (the partners of mixing ops) are decoded once per call, as before.
Pixels are those of `FolderImages`: the same decode, the same resize.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import torch

from labelenh.data.base import as_index
from labelenh.data.folder import FolderImages, fit, open_rgb, resized_crops


class ChunkImages:
    """`source`'s files `ids` decoded once each (submitted to `pool` now, waited for on use);
    otherwise behaves as `source` (labels, image_shape, fingerprint, ...)."""

    def __init__(self, source: FolderImages, ids: Iterable[int], pool: Executor) -> None:
        self.source = source
        self._decoded: dict[int, Future] = {
            i: pool.submit(open_rgb, source.root / source.paths[i]) for i in dict.fromkeys(int(i) for i in ids)
        }

    def __getattr__(self, name: str) -> Any:  # labels, image_shape, fingerprint, paths, ...
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    def _image(self, i: int):
        """The RGB PIL image of file i: this chunk's decode, else a fresh one."""
        fut = self._decoded.get(i)
        return fut.result() if fut is not None else open_rgb(self.source.root / self.source.paths[i])

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S], as `FolderImages.load` (each distinct file decoded once)."""
        idx = as_index(indices, len(self)).tolist()
        s = self.source.image_size
        made: dict[int, np.ndarray] = {}
        out = np.empty((len(idx), 3, s, s), dtype=np.uint8)  # [B, 3, S, S]
        for j, i in enumerate(idx):
            if i not in made:
                made[i] = fit(self._image(i), s, self.source.crop_pct)
            out[j] = made[i]
        return torch.from_numpy(out)

    def load_original(self, index: int) -> torch.Tensor:
        """uint8 [3, H, W], as `FolderImages.load_original`."""
        arr = np.asarray(self._image(int(index)), dtype=np.uint8)  # [H, W, 3]
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def resized_crops(self, index: int, boxes: np.ndarray, size: tuple[int, int],
                      flips: np.ndarray | None = None) -> torch.Tensor:
        """uint8 [K, 3, H, W], as `FolderImages.resized_crops`."""
        path = self.source.root / self.source.paths[int(index)]
        return torch.from_numpy(resized_crops(self._image(int(index)), boxes, size, f"image {path}", flips))

    def original_sizes(self, indices: torch.Tensor | np.ndarray) -> np.ndarray:
        """int64 [B, 2] (height, width): of this chunk's decodes where there is one, so a box is
        drawn on the very image it is cut from; else from the file's header."""
        idx = np.asarray(torch.as_tensor(np.asarray(indices)).reshape(-1).cpu(), dtype=np.int64)
        out = np.empty((len(idx), 2), dtype=np.int64)
        here = np.array([i in self._decoded for i in idx.tolist()], dtype=bool)
        for j in np.flatnonzero(here).tolist():
            w, h = self._decoded[int(idx[j])].result().size
            out[j] = (h, w)
        if not here.all():  # partners outside the chunk: their headers (no decode)
            out[~here] = self.source.original_sizes(idx[~here])
        return out
