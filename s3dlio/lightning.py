"""A Lightning ``CheckpointIO`` plugin that saves and loads checkpoints through s3dlio.

>>> trainer = lightning.pytorch.Trainer(plugins=[s3dlio.lightning.S3dlioCheckpointIO()])
>>> trainer.fit(model)
>>> trainer.save_checkpoint("s3://bucket/run-1/last.ckpt")
>>> trainer.fit(model, ckpt_path="s3://bucket/run-1/last.ckpt")   # resume

Paths may be ``s3://``, ``file://`` or ``direct://`` URIs, or local paths (which become
``file://``). Checkpoints are streamed with :func:`s3dlio.checkpoint.save` /
:func:`s3dlio.checkpoint.load`: never held whole in memory, never published half written.
Importing this module imports lightning (``lightning.pytorch``).
"""

from __future__ import annotations

import os
from typing import Any

# lightning is no extra of s3dlio: where it is not installed mypy sees CheckpointIO as Any.
from lightning.pytorch.plugins.io import CheckpointIO  # type: ignore[import-not-found, unused-ignore]

import s3dlio as _s3

from . import checkpoint as _ckpt
from .config import StorageConfig

__all__ = ["S3dlioCheckpointIO"]


def _uri(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    return p if "://" in p else "file://" + os.path.abspath(p)


class S3dlioCheckpointIO(CheckpointIO):  # type: ignore[misc, unused-ignore]
    """Lightning ``CheckpointIO`` over s3dlio: ``save_checkpoint`` streams ``torch.save`` to the
    URI, ``load_checkpoint`` streams ``torch.load`` from it, ``remove_checkpoint`` deletes it.

    ``config``, ``part_size`` and ``max_parts_in_flight`` go to :func:`s3dlio.open`.
    """

    def __init__(
        self,
        *,
        config: StorageConfig | None = None,
        part_size: int | None = None,
        max_parts_in_flight: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.part_size = part_size
        self.max_parts_in_flight = max_parts_in_flight

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        """Stream ``checkpoint`` to ``path`` with ``torch.save``; the object appears only once
        complete. ``storage_options`` is not supported (a ``TypeError``, as in Lightning's own)."""
        if storage_options is not None:
            raise TypeError(
                f"`storage_options` is not supported by {type(self).__name__}; configure it with "
                "S3dlioCheckpointIO(config=s3dlio.StorageConfig(...))"
            )
        _ckpt.save(
            checkpoint,
            _uri(path),
            config=self.config,
            part_size=self.part_size,
            max_parts_in_flight=self.max_parts_in_flight,
        )

    def load_checkpoint(
        self, path: str | os.PathLike[str], map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """``torch.load`` of the checkpoint at ``path`` (a missing one is a
        ``FileNotFoundError``: :class:`~s3dlio.exceptions.NotFoundError`)."""
        kwargs: dict[str, Any] = {"map_location": map_location}
        if weights_only is not None:
            kwargs["weights_only"] = weights_only
        out: dict[str, Any] = _ckpt.load(_uri(path), config=self.config, **kwargs)
        return out

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Delete the checkpoint at ``path`` (and anything under ``path/``, as Lightning's
        recursive remove does); a missing one is no error."""
        _s3.delete_prefix(_uri(path), config=self.config)
