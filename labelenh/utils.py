"""The helpers that used to live here, under the names callers import: seeds (labelenh.rng),
provenance, devices, atomic writes (labelenh.files) and write errors (labelenh.write_errors)."""

from labelenh.devices import resolve_device
from labelenh.files import atomic_write, remove_stale_temporaries, write_json
from labelenh.provenance import environment, git_commit, sha256_file
from labelenh.rng import derive_seed, generator
from labelenh.write_errors import OUTPUT_FLAGS, WRITE_ERRORS, write_error

__all__ = ["OUTPUT_FLAGS", "WRITE_ERRORS", "atomic_write", "derive_seed", "environment", "generator",
           "git_commit", "remove_stale_temporaries", "resolve_device", "sha256_file", "write_error",
           "write_json"]
