"""Scale-out on JAX's own runtime: a device mesh, sharded batches, several hosts.

The devices form a :class:`jax.sharding.Mesh` with a ``data`` axis and a ``model`` axis.
Each mini-batch is split along ``data``; params and optimizer state are replicated, except
that with ``model`` > 1 every layer whose width divides by it keeps only its share of the
columns of ``W`` (and of ``b``) on each device. Given those shardings, ``jax.jit`` partitions
the whole epoch (its ``lax.scan`` included) with XLA SPMD and inserts the gradient all-reduce
itself: there is no pmap and no hand-written collective here.

Several hosts join through :func:`jax.distributed.initialize` (:func:`initialize`); the mesh
then spans every process's devices and each process runs the same program.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from fmlp.errors import ConfigError, DistributedError

if TYPE_CHECKING:
    from fmlp.config import DistributedConfig, ParallelConfig

DATA, MODEL = "data", "model"
PyTree = Any
__all__ = ["DistributedError"]  # re-exported: fmlp.parallel.DistributedError keeps working


def initialize(cfg: DistributedConfig) -> bool:
    """Join the multi-process run ``cfg`` describes; return whether this is one.

    Must run before any JAX computation in the process. A single-process config (the
    default) does nothing; calling it again once joined does nothing either.

    Raises:
      DistributedError: the coordinator cannot be reached or the cluster's environment does
        not say enough, within ``distributed.initialization_timeout`` seconds.
    """
    if not cfg.enabled:
        return False
    if jax.distributed.is_initialized():
        return True
    if cfg.process_id not in (None, 0) and cfg.coordinator_address is not None:
        _wait_for_coordinator(cfg.coordinator_address, cfg.initialization_timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk over TCP
    try:
        jax.distributed.initialize(
            cfg.coordinator_address,
            cfg.num_processes,
            cfg.process_id,
            cluster_detection_method=None if cfg.from_environment else "deactivate",
            initialization_timeout=cfg.initialization_timeout,
            heartbeat_timeout_seconds=cfg.heartbeat_timeout,
        )
    except (RuntimeError, ValueError) as err:
        raise DistributedError(
            f"could not join the multi-process run (distributed.coordinator_address="
            f"{cfg.coordinator_address}, distributed.num_processes={cfg.num_processes}, "
            f"distributed.process_id={cfg.process_id}): {err}. Start every process with the "
            "same coordinator address and process count and its own process id, or set "
            "distributed.from_environment=true on a cluster that sets them."
        ) from err
    return True


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Wait until process 0's coordinator accepts connections at ``address`` (host:port).

    JAX's own client aborts the whole process (a C++ check failure) when it cannot register
    in time; checking first turns an unreachable coordinator into a DistributedError.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                reason = err.strerror or err
                raise DistributedError(
                    f"cannot reach the coordinator at distributed.coordinator_address={address} "
                    f"within distributed.initialization_timeout={timeout:g} s ({reason}); start "
                    "process 0 first, with the same address, and check that this host can "
                    "reach it"
                ) from None
            time.sleep(0.5)


def make_mesh(data: int | None = None, model: int = 1) -> Mesh:
    """A ``(data, model)`` mesh over the first ``data * model`` devices of all processes.

    ``data`` None takes every device not used by ``model``.

    Raises:
      fmlp.errors.ConfigError: the sizes ask for more devices than there are, or (several
        processes) for fewer than all of them.
    """
    devices = jax.devices()
    if data is None:
        data = max(1, len(devices) // model)
    if data * model > len(devices):
        raise ConfigError(
            f"parallel.data={data} x parallel.model={model} needs {data * model} devices, but "
            f"{len(devices)} are visible ({devices[0].platform}); lower parallel.data or "
            "parallel.model, or leave parallel.data null to use every device"
        )
    if jax.process_count() > 1 and data * model != len(devices):
        raise ConfigError(
            f"parallel.data={data} x parallel.model={model} uses {data * model} of the "
            f"{len(devices)} devices of {jax.process_count()} processes; a multi-process run "
            "must use them all (leave parallel.data null)"
        )
    return jax.make_mesh(
        (data, model), (DATA, MODEL), (AxisType.Auto, AxisType.Auto),
        devices=devices[: data * model],
    )  # fmt: skip


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "train.batch_size") -> None:
    """Raise :class:`~fmlp.errors.ConfigError` unless the global batch splits evenly on ``data``."""
    shards = mesh.shape[DATA]
    if batch_size % shards:
        lower, upper = batch_size - batch_size % shards, batch_size + shards - batch_size % shards
        raise ConfigError(
            f"{key}={batch_size} does not divide by the {shards} devices of the data axis "
            f"(parallel.data={shards}); choose a multiple of {shards}, e.g. {key}="
            f"{lower or upper} or {upper}, or change parallel.data"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays whose leading (example) axis is split over ``data``."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(mesh: Mesh, params: PyTree) -> PyTree:
    """Per-leaf shardings for MLP params: replicated, or columns over ``model`` when wide.

    A layer ``{"W": (in, out), "b": (out,)}`` is split along ``out`` when the ``model`` axis has
    more than one device and divides ``out``; any other leaf is replicated.
    """
    shards = mesh.shape[MODEL]

    def layer(layer: dict[str, Any]) -> dict[str, NamedSharding]:
        out = np.shape(layer["W"])[-1]
        if shards > 1 and out % shards == 0:
            return {
                "W": NamedSharding(mesh, PartitionSpec(None, MODEL)),
                "b": NamedSharding(mesh, PartitionSpec(MODEL)),
            }
        return {name: replicated(mesh) for name in layer}

    return [layer(lay) for lay in params]


def state_shardings(mesh: Mesh, state: PyTree, tx: optax.GradientTransformation) -> PyTree:
    """Shardings for a :class:`fmlp.train.TrainState`: optimizer moments follow their params."""
    params = param_shardings(mesh, state.params)
    opt_state = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        state.opt_state,
        params,
        transform_non_params=lambda _: replicated(mesh),
    )
    rest = {name: replicated(mesh) for name in ("step", "epoch", "key")}
    return state._replace(params=params, opt_state=opt_state, **rest)


def put(tree: PyTree, shardings: PyTree | NamedSharding) -> PyTree:
    """Place host (or single-device) values on the mesh as global arrays.

    Every process must pass the same values; each supplies only its own devices' shards, so
    this also works when the mesh spans several hosts.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if isinstance(shardings, NamedSharding):
        targets: Sequence[NamedSharding] = [shardings] * len(leaves)
    else:
        targets = treedef.flatten_up_to(shardings)

    def place(value: Any, sharding: NamedSharding) -> jax.Array:
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return treedef.unflatten([place(v, s) for v, s in zip(leaves, targets)])


def fetch(tree: PyTree) -> PyTree:
    """Whole host (numpy) copies of global arrays, gathered from every process's shards."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def from_main_process(value: Any) -> Any:
    """Process 0's ``value`` (a host scalar or array) on every process; as is for one process."""
    if jax.process_count() == 1:
        return value
    return multihost_utils.broadcast_one_to_all(value)


def is_main_process() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a run's arrays live, built once by :func:`layout` and passed to every program.

    ``mesh`` is the ``(data, model)`` device mesh; ``state`` the shardings of the train state
    (a pytree shaped like it).
    """

    mesh: Mesh
    state: PyTree

    @property
    def replicated(self) -> NamedSharding:
        """A whole copy on every device."""
        return replicated(self.mesh)

    @property
    def size(self) -> int:
        """Devices in the mesh."""
        return self.mesh.size

    def put_state(self, state: PyTree) -> PyTree:
        """``state`` placed with its shardings."""
        return put(state, self.state)

    def put_replicated(self, tree: PyTree) -> PyTree:
        """Host values (the data) copied to every device."""
        return put(tree, self.replicated)

    def shard_batch(self, *arrays: jax.Array, stacked: bool = False) -> tuple[jax.Array, ...]:
        """Inside a program: split mini-batch arrays over ``data`` along the example axis.

        ``stacked``: the arrays hold every batch of an epoch, ``(steps, B, ...)``, so the
        example axis is the second one.
        """
        spec = PartitionSpec(None, DATA) if stacked else PartitionSpec(DATA)
        sharding = NamedSharding(self.mesh, spec)
        return tuple(jax.lax.with_sharding_constraint(a, sharding) for a in arrays)

    def round_batch(self, batch_size: int) -> int:
        """``batch_size`` rounded up to a multiple of the ``data`` axis (for evaluation)."""
        shards = self.mesh.shape[DATA]
        return -(-batch_size // shards) * shards

    fetch = staticmethod(fetch)


def layout(
    cfg: ParallelConfig, state: PyTree, tx: optax.GradientTransformation, *, batch_size: int
) -> Layout:
    """The mesh ``cfg`` asks for and the train state's shardings on it.

    Raises:
      fmlp.errors.ConfigError: too many devices asked for, or ``batch_size`` (the global
        ``train.batch_size``) does not split evenly over the ``data`` axis.
    """
    mesh = make_mesh(cfg.data, cfg.model)
    check_batch_size(batch_size, mesh)
    return Layout(mesh, state_shardings(mesh, state, tx))
