"""The HDF5 soft-label store: the contract between stage one (teachers) and stage two (students).

- `export_soft_labels`  stream teachers' logits (clean + replayable views) into a store
- `SoftLabelStore`      read them back: gathers [B, M, C], preloaded or lazily per worker
- `store_info`, `verify_store`  what a store holds; whether it is sound and fits a dataset

By responsibility: schema (layout and attributes, the one source of README's tables), attrs,
writer, shards; the export = teachers (loading, running) → prepare (claim the file, staging)
→ compute (one chunk) → export (plan, deal chunks, merge, finish) → verify (`--verify K`);
reading = checks (opening, attributes, structure, checksums, contents) → arrays (rows, in
memory or mapped) → reader (`SoftLabelStore`) → dataset (`StoreBatches`); derive (stores from
stores), inspect (`store info`/`verify`), topk, lock, progress.
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
