"""labelenh: teacher-student label enhancement with a precomputed HDF5 soft-label store."""

__version__ = "0.1.0"
