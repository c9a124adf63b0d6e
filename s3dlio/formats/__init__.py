"""Sharded dataset formats: parsing, indexing and encoding of WebDataset tar, TFRecord, NPZ/NPY
and HDF5 files, and ready decoders for common sample fields.

Everything here works on bytes already fetched (an :class:`s3dlio.Buffer`, ``bytes``,
``memoryview``): no I/O of its own, so the same code serves the indexed loader, the streaming
mode and the generator. Arrays come back as zero-copy views of the buffer where the format stores
them uncompressed.
"""
