"""The HDF5 soft-label store: the contract between stage one (teachers) and stage two (students).

- `export_soft_labels`  stream teachers' logits (clean + replayable views) into a store
- `SoftLabelStore`      read them back: gathers [B, M, C], preloaded or lazily per worker
- `store_info`, `verify_store`  what a store holds; whether it is sound and fits a dataset
Layout and attributes: labelenh.store.schema.
"""

from labelenh.store.dataset import StoreBatches, StoreDataset, collate, epoch_views  # noqa: F401
from labelenh.store.export import ExportResult, export_soft_labels
from labelenh.store.inspect import format_info, store_info, verify_store
from labelenh.store.reader import SoftLabelStore
from labelenh.store.schema import FORMAT, SCHEMA, LogitFormat
from labelenh.store.teachers import Teacher, load_teachers, teacher_from_model
from labelenh.store.topk import topk_compress, topk_dense
from labelenh.store.verify import verify_rows

__all__ = ["FORMAT", "SCHEMA", "ExportResult", "LogitFormat", "SoftLabelStore", "Teacher",
           "export_soft_labels", "format_info", "load_teachers", "store_info", "teacher_from_model",
           "topk_compress", "topk_dense", "verify_rows", "verify_store"]
