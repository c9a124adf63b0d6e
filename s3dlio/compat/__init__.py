"""Drop-in layers for code written against other storage libraries.

* :mod:`s3dlio.compat.s3torchconnector`: AWS's s3torchconnector (``S3Client``, ``S3MapDataset``,
  ``S3IterableDataset``, ``S3Checkpoint``): switching is one import line.
* :mod:`s3dlio.compat.reference`: the function names the reference s3dlio release's clients call
  (the DLIO benchmark, mlcommons/storage).

Both run on s3dlio's own pool: cancellable, fork-safe, and the same code as the rest of the package.
See docs/migrating.md.
"""
