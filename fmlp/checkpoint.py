"""Checkpoints of the whole train state with orbax-checkpoint.

A run directory holds two orbax managers: ``checkpoints/latest`` keeps the last K epochs (what
``--resume`` continues from) and ``checkpoints/best`` the one with the best validation
metric. Orbax writes each step into a temporary folder and renames it when complete, so a
checkpoint interrupted mid-write is never listed, never loaded.

Arrays are saved as whole host numpy values (gathered from every device and process): a
checkpoint written on any device count, host count or backend restores onto whatever devices
the restoring process has (CPU included). Every process of a multi-process run calls
:meth:`Checkpointer.save`; orbax has process 0 write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from fmlp import parallel
from fmlp.errors import NoCheckpointError

PyTree = Any


def _manager(directory: Path, **options: Any) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, **options),
    )


class Checkpointer:
    """Saves ``(state, meta)`` pairs under ``run_dir/checkpoints`` and restores them.

    Args:
      run_dir: the run directory.
      keep: how many of the latest checkpoints to keep.
      best_mode: ``"min"`` or ``"max"``: which validation metric value is best.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, keep: int = 2, best_mode: str = "min"):
        root = Path(run_dir) / "checkpoints"
        self.latest = _manager(root / "latest", max_to_keep=keep)
        self.best = _manager(
            root / "best", max_to_keep=1, best_fn=lambda m: m["metric"], best_mode=best_mode
        )

    def save(self, epoch: int, state: PyTree, meta: dict[str, Any], metric: float) -> None:
        """Save ``state`` (a pytree of arrays) and JSON ``meta`` as epoch ``epoch``."""
        host = parallel.fetch(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
        self.latest.save(epoch, args=args, force=True)
        self.best.save(epoch, args=args, metrics={"metric": float(metric)}, force=True)

    def latest_epoch(self) -> int | None:
        """The newest complete checkpoint's epoch, or None."""
        return self.latest.latest_step()

    def restore(self, target: PyTree, *, best: bool = False) -> tuple[PyTree, dict[str, Any]]:
        """Restore into the structure of ``target`` (arrays or ``jax.ShapeDtypeStruct``s);
        return ``(state, meta)``.

        Raises:
          fmlp.errors.NoCheckpointError: when the run has no complete checkpoint (a
            FileNotFoundError).
        """
        manager = self.best if best else self.latest
        step = manager.best_step() if best else manager.latest_step()
        if step is None:
            raise NoCheckpointError(
                f"No complete checkpoint in {manager.directory}; start the run without --resume."
            )
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        # orbax gives NamedTuples (optax states) back as plain tuples: reuse target's structure.
        state = jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(restored.state))
        return state, restored.meta

    def close(self) -> None:
        """Wait for pending writes and release the managers."""
        for manager in (self.latest, self.best):
            manager.wait_until_finished()
            manager.close()
