"""Teachers of an export: loading them (run folders, checkpoints or in-memory models, each
with the record the store keeps of it) and running them on blocks of normalised images under
the export's autocast mode."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelenh.amp import AMP_DTYPES, check_amp, resolve_amp
from labelenh.data.base import normalize
from labelenh.errors import LabelenhError
from labelenh.store.schema import TeacherRecord, dedupe_names


@dataclass
class Teacher:
    """A teacher ready to export: its (eval-mode) model and what the store records about it."""

    name: str
    model: nn.Module
    record: TeacherRecord


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes): identifies in-memory teachers."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d buffers included
    return h.hexdigest()


def teacher_from_model(model: nn.Module, name: str, *, model_name: str | None = None,
                       metrics: dict[str, Any] | None = None, source: str = "") -> Teacher:
    """Wrap an in-memory model (its sha256 is that of its weights)."""
    rec = TeacherRecord(name=name, model=model_name or type(model).__name__,
                        sha256=weights_sha256(model), source=source, metrics=dict(metrics or {}))
    return Teacher(name=name, model=model, record=rec)


def load_teachers(paths: Sequence[str | Path], device: torch.device | str, num_classes: int,
                  *, model_name: str | None = None) -> list[Teacher]:
    """Teachers from run folders or checkpoint files; names from the run/checkpoint, made unique."""
    from labelenh.checkpoint import load_teacher

    loaded = [load_teacher(p, device, model_name=model_name, num_classes=num_classes) for p in paths]
    names = dedupe_names([info.get("name") or Path(str(p)).stem for (_, info), p in zip(loaded, paths, strict=True)])
    out = []
    for (model, info), name in zip(loaded, names, strict=True):
        rec = TeacherRecord(name=name, model=str(info.get("model", "unknown")),
                            sha256=str(info.get("sha256", "unknown")), source=str(info.get("path", "")),
                            metrics=dict(info.get("metrics") or {}))
        out.append(Teacher(name=name, model=model, record=rec))
    return out


def export_amp(amp: str, device: torch.device) -> str:
    """The autocast mode an export uses: "off" off CUDA; "auto" means fp16 on CUDA (fp16 keeps
    3 more mantissa bits of the logits than bf16)."""
    return resolve_amp(check_amp(amp), device, auto="fp16")


class TeacherRunner:
    """Runs every teacher on normalised blocks of images: eval mode, inference mode, autocast
    on CUDA; refuses NaN/Inf logits and logits of the wrong width."""

    def __init__(self, teachers: list[Teacher], source: Any, *, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device, amp: str,
                 stored: Any = None, workers: int | None = None) -> None:
        from labelenh.data import TensorImages
        from labelenh.data.loader import resolve_workers

        self.workers = resolve_workers(workers)

        self.teachers = teachers
        # a store derived from stores (labelenh.store.derive): chunks come from there
        self.stored = stored
        self.device = device
        self.amp = amp
        self.amp_dtype = AMP_DTYPES.get(amp)
        self.num_classes = num_classes
        if device.type == "cuda" and isinstance(source, TensorImages):
            source = source.to(device)  # CIFAR-size data lives on the GPU as uint8
        self.source = source
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        for t in teachers:
            t.model.to(device).eval()
        self._decoders: ThreadPoolExecutor | None = None  # image folders: the chunks' decode threads

    def chunk_source(self, plan: Any, c: int) -> Any:
        """What chunk c's images come from. For an image folder, its files start decoding now in
        background threads, once each (`ChunkImages`): called for chunk c + 1 before chunk c's
        forwards, decoding overlaps the teachers."""
        from labelenh.data.decoded import ChunkImages
        from labelenh.data.folder import FolderImages

        if not isinstance(self.source, FolderImages):
            return self.source
        if self._decoders is None:  # PIL releases the GIL while it decodes: threads suffice
            self._decoders = ThreadPoolExecutor(max(1, self.workers), thread_name_prefix="decode")
        s0, s1 = plan.chunk_bounds(c)
        return ChunkImages(self.source, range(s0, s1), self._decoders)

    def _normalize(self, x: torch.Tensor, owned: bool) -> torch.Tensor:
        """(x / 255 - mean) / std as float32 on the device, in place when that touches no one
        else's tensor: a block of 224x224 images is large, and a normalised copy beside it
        raised the export's peak memory by ~15 %."""
        y = x.to(self.device, dtype=torch.float32, non_blocking=True)
        if y is x and not owned:  # already float32 on the device: may be the source's own storage
            y = y.clone()
        return normalize(y, self.mean, self.std, inplace=True)

    def clean_images(self, idx: torch.Tensor, source: Any = None) -> torch.Tensor:
        src = self.source if source is None else source
        return self._normalize(src.load(idx), owned=False)  # [B, C, H, W]

    def view_images(self, recipes, source: Any = None) -> torch.Tensor:
        from labelenh.views import gather_and_apply

        src = self.source if source is None else source
        x, _ = gather_and_apply(src, recipes, self.num_classes, uint8_ok=True)  # fresh images
        return self._normalize(x, owned=True)

    def forward(self, x: torch.Tensor, what: str) -> list[torch.Tensor]:
        """float32 logits [B, C] of each teacher, on the device."""
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for t in self.teachers:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                z = t.model(x)
            z = z.float()
            if z.ndim != 2 or z.shape[0] != x.shape[0] or z.shape[1] != self.num_classes:
                raise LabelenhError(
                    f"teacher {t.name} returned logits of shape {list(z.shape)} for {x.shape[0]} images; "
                    f"expected [{x.shape[0]}, {self.num_classes}]: use a teacher trained on this dataset"
                )
            if not bool(torch.isfinite(z).all()):
                hint = " (try --amp off)" if self.amp_dtype is not None else ""
                raise LabelenhError(
                    f"teacher {t.name} produced NaN/Inf logits for {what}{hint}: check the checkpoint; "
                    "the store stays incomplete"
                )
            outs.append(z)
        return outs

