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

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from fmlp import parallel
from fmlp.errors import NoCheckpointError, StorageError

PyTree = Any
_STORAGE_FAULTS = re.compile(
    r"No space left|Disk quota|Read-only file system|Permission denied|Input/output error"
)


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
        self.root = root = Path(run_dir) / "checkpoints"
        self.latest = _manager(root / "latest", max_to_keep=keep)
        self.best = _manager(
            root / "best", max_to_keep=1, best_fn=lambda m: m["metric"], best_mode=best_mode
        )

    def save(
        self,
        epoch: int,
        state: PyTree,
        meta: dict[str, Any],
        metric: float,
        *,
        latest: bool = True,
        best: bool = True,
    ) -> None:
        """Save ``state`` (a pytree of arrays) and JSON ``meta`` as epoch ``epoch``, into
        ``best`` (with its validation ``metric``; first, so that a ``latest`` checkpoint
        never names a best epoch that ``best`` lacks) and into ``latest``, as asked.

        Raises:
          fmlp.errors.StorageError: the disk is full or read-only; the checkpoints saved
            before are untouched (orbax writes a step beside them and renames it when done).
        """
        host = parallel.fetch(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
        try:
            if best and epoch not in self.best.all_steps():  # there: this run's same epoch
                self.best.save(epoch, args=args, metrics={"metric": float(metric)}, force=True)
            if latest:
                self.latest.save(epoch, args=args, force=True)
        except Exception as err:  # orbax and tensorstore wrap the OSError in their own types
            if not (isinstance(err, OSError) or _STORAGE_FAULTS.search(str(err))):
                raise
            raise StorageError(
                f"could not write the checkpoint of epoch {epoch} under {self.root}: "
                f"{_first_line(err)}"
            ) from err

    def latest_epoch(self) -> int | None:
        """The newest complete checkpoint's epoch, or None."""
        return self.latest.latest_step()

    def steps(self) -> list[int]:
        """The epochs of every complete checkpoint in ``latest``, oldest first."""
        return sorted(self.latest.all_steps())

    def restore(self, target: PyTree, *, best: bool = False) -> tuple[PyTree, dict[str, Any]]:
        """Restore into the structure of ``target`` (arrays or ``jax.ShapeDtypeStruct``s);
        return ``(state, meta)``.

        Raises:
          fmlp.errors.NoCheckpointError: when the run has no complete checkpoint.
        """
        manager = self.best if best else self.latest
        step = manager.best_step() if best else manager.latest_step()
        if step is None:
            raise NoCheckpointError(
                f"No complete checkpoint in {manager.directory}; start the run without --resume."
            )
        try:
            return self._restore(manager, step, target)
        except Exception as err:  # orbax raises many types for a damaged step
            raise NoCheckpointError(
                f"the checkpoint of epoch {step} in {manager.directory} is damaged "
                f"({_first_line(err)})"
            ) from err

    def restore_newest_intact(
        self, target: PyTree, warn: Any = None, *, move_aside: bool = True
    ) -> tuple[PyTree, dict[str, Any]] | None:
        """Restore the newest checkpoint of ``latest`` that reads back whole.

        A damaged newer one (a truncated file, say) is moved aside to ``<epoch>.damaged``
        (kept, never deleted; only with ``move_aside``, which one process of a multi-process
        run does) and ``warn(message)`` says which epoch is used instead. Returns
        None when ``latest`` holds no checkpoint; raises NoCheckpointError when every one is
        damaged.
        """
        steps = self.steps()
        for i, step in enumerate(reversed(steps)):
            try:
                restored = self._restore(self.latest, step, target)
            except Exception as err:  # orbax raises many types for a damaged step
                damaged = f"{self.latest.directory}/{step}"
                older = steps[-i - 2] if i + 1 < len(steps) else None
                if older is None:
                    raise NoCheckpointError(
                        f"every checkpoint in {self.latest.directory} is damaged (epoch {step}: "
                        f"{_first_line(err)}); start a new run with another --out, or copy a "
                        f"step of {self.best.directory} into it to resume from there"
                    ) from err
                if warn is not None:
                    warn(
                        f"the checkpoint of epoch {step} is damaged ({_first_line(err)}); "
                        f"moved it to {damaged}.damaged and resuming from epoch {older}"
                    )
                if move_aside:
                    Path(damaged).rename(f"{damaged}.damaged")
                    self.latest.reload()
                continue
            return restored
        return None

    def _restore(self, manager: ocp.CheckpointManager, step: int, target: PyTree) -> tuple:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
        with _quiet_if_it_fails():
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


@contextlib.contextmanager
def _quiet_if_it_fails() -> Iterator[None]:
    """Hold back what is written to stderr (fd 2) inside; print it only if nothing failed.

    When a damaged checkpoint fails to restore, orbax closes its event loop while
    tensorstore's other reads still complete, and each of them prints a traceback
    ("Event loop is closed") from its own thread. The failure itself is raised, and
    reported by fmlp in one line; the noise is dropped.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            if failed:
                time.sleep(0.2)  # let the late callbacks print into the held file
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]
