"""Sweeps: the members of a grid (and their seeds) trained together, one program per group.

A sweep expands ``key=v1,v2,...`` assignments (and ``seeds`` seeds) into members, each a
config of its own with a run directory of its own (``DIR/members/<i>/``, which ``fmlp
eval``, ``predict`` and ``export`` take like any run). Members whose configs differ only in
values that leave every shape unchanged (:data:`VECTORIZED`: the optimizer's numeric
hyper-parameters, which live in the optimizer state through ``optax.inject_hyperparams``,
the dropout rates and label smoothing, which the group's loss takes as per-member arrays, and
the seed) form a group: their train states are stacked on a leading member axis and one
compiled epoch, ``jax.vmap`` of :func:`fmlp.train.make_epoch`, trains them all. Groups run
one after another. After each epoch every member goes through the same per-epoch hooks as
``fmlp train`` (:mod:`fmlp.run`), so its run directory is what ``fmlp train`` with its
overrides writes; a member that diverges or stops early is frozen (its state no longer
changes) and reported, the others train on.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from fmlp import config, data, nn, run, train
from fmlp.errors import ConfigError, RunDirectoryError, TrainingDiverged

PathLike = run.PathLike

VECTORIZED: tuple[str, ...] = (
    *(f"optimizer.{k}" for k in train.HYPERPARAMETERS), "model.dropout", "model.label_smoothing",
    "train.seed",
)  # fmt: skip
"""Keys whose values leave shapes unchanged: members differing only in these train together
in one vectorized program, unless a value switches a part of the program on or off (a
``clip_norm`` of null against a number, a layer's dropout or the label smoothing at 0
against above): those train in a group of their own (:func:`group_key`)."""

VECTORIZE = ("auto", "never")
"""``--vectorize``: ``auto`` trains each group in one program; ``never`` one member at a time
through the same program (a group of one), for comparison and as the fallback. Or a list of
swept keys, ``KEY,KEY,...``, that must be vectorized (:func:`required_keys`): as ``auto``,
and an error for a key whose values cannot train in one program."""

SWITCHED_OFF = {
    "optimizer.clip_norm": "null (no clipping)",
    "model.dropout": "a rate of 0 (no dropout in that layer)",
    "model.label_smoothing": "0 (no smoothing)",
}
"""The :data:`VECTORIZED` keys with a value that switches a part of the program off."""


@dataclasses.dataclass
class Member:
    """One point of the grid: its overrides, its run and how its training ended."""

    index: int
    overrides: dict[str, str]  # key -> value, as given on the command line
    run: run.Run
    status: str = "training"  # then "done", "stopped" (early stopping) or "diverged"
    seconds: list[float] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


def parse_grid(assignments: Sequence[str]) -> dict[str, list[str]]:
    """``["optimizer.learning_rate=0.1,0.01", ...]`` -> ``{key: [values]}``.

    Values are split at commas outside brackets, so ``model.hidden=[64,64],[128]`` gives two.

    Raises:
      ConfigError: an assignment without ``=``, with no value, or a key given twice.
    """
    grid: dict[str, list[str]] = {}
    for text in assignments:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"sweep: {text!r} is not key=v1,v2,...; e.g. optimizer.learning_rate=0.1,0.01"
            )
        if key in grid:
            raise ConfigError(f"sweep: {key} is given twice; list all its values once: {key}=v1,v2")
        parts, depth, start = [], 0, 0
        for i, ch in enumerate(values):
            depth += (ch in "[{") - (ch in "]}")
            if ch == "," and depth == 0:
                parts.append(values[start:i])
                start = i + 1
        parts.append(values[start:])
        parts = [p.strip() for p in parts]
        if not all(parts):
            raise ConfigError(f"sweep: {key} has an empty value in {values!r}; e.g. {key}=0.1,0.01")
        grid[key] = parts
    return grid


def members_of(
    grid: Mapping[str, Sequence[str]], seeds: int, base_seed: int
) -> list[dict[str, str]]:
    """Every member's overrides: the product of the grid's values, then of ``seeds`` seeds
    (``train.seed`` = ``base_seed``, ``base_seed + 1``, ...), seeds varying fastest."""
    if seeds < 1:
        raise ConfigError(f"sweep: --seeds must be at least 1, got {seeds}.")
    if seeds > 1 and "train.seed" in grid:
        raise ConfigError("sweep: give train.seed=... or --seeds, not both.")
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    if seeds == 1:
        return points
    return [p | {"train.seed": str(base_seed + s)} for p in points for s in range(seeds)]


def switches(member: run.Run) -> dict[str, Any]:
    """For each key of :data:`SWITCHED_OFF`, what a run's value switches on in its program:
    clipping, each hidden layer's dropout, label smoothing."""
    return {
        "optimizer.clip_norm": member.cfg.optimizer.clip_norm is not None,
        "model.dropout": [rate > 0 for rate in member.net.dropout_rates],
        "model.label_smoothing": member.net.label_smoothing > 0,
    }


def group_key(member: run.Run) -> str:
    """What must be equal for runs to train in one program: the config without the
    :data:`VECTORIZED` keys, and what their values switch on (:func:`switches`)."""
    d = config.to_dict(member.cfg)
    for key in VECTORIZED:
        section, name = key.split(".")
        d[section].pop(name)
    d["run"].pop("name", None)
    d["on"] = switches(member)
    return json.dumps(d, sort_keys=True, default=str)


def required_keys(vectorize: str, swept: Collection[str] | None = None) -> tuple[str, ...]:
    """The keys a ``--vectorize KEY,KEY,...`` list requires to be vectorized; none for
    ``auto`` and ``never``. With the ``swept`` keys, each is checked to be one of them.

    Raises:
      ConfigError: an empty list or key, a key that is not swept, or one that changes shapes
        or programs (not :data:`VECTORIZED`), naming it.
    """
    if vectorize in VECTORIZE:
        return ()
    keys = tuple(key.strip() for key in vectorize.split(","))
    if not all(keys):
        raise ConfigError(
            f"sweep: --vectorize must be {', '.join(VECTORIZE)} or swept keys KEY,KEY,... "
            f"(e.g. optimizer.learning_rate,train.seed), got {vectorize!r}."
        )
    for key in keys if swept is not None else ():
        if key not in swept:
            shown = ", ".join(sorted(swept)) or "none"
            raise ConfigError(
                f"sweep: --vectorize {key}: {key} is not swept (swept keys: {shown}); list keys "
                "given two or more values, or train.seed with --seeds."
            )
        if key not in VECTORIZED:
            raise ConfigError(
                f"sweep: --vectorize {key}: {key} changes shapes or programs, so its values "
                f"train in separate groups, one program each; the keys that can be vectorized "
                f"are {', '.join(VECTORIZED)}."
            )
    return keys


def check_vectorized(key: str, members: Sequence[Member]) -> None:
    """Raise :class:`ConfigError` if the members' values of ``key`` (a :func:`required_keys`
    one) switch parts of the program on and off (:func:`switches`): they cannot train in one
    program."""
    sides: dict[str, dict[str, None]] = {}
    for m in members:
        side = json.dumps(switches(m.run).get(key))
        sides.setdefault(side, {})[m.overrides[key]] = None
    if len(sides) > 1:
        shown = " against ".join(", ".join(values) for values in sides.values())
        raise ConfigError(
            f"sweep: --vectorize {key}: its values {shown} cannot train in one program: "
            f"{SWITCHED_OFF[key]} compiles a program without that part; list only such values "
            f"or none, or leave {key} out of --vectorize."
        )


def net_values(net: nn.MLP) -> dict[str, jax.Array]:
    """What the nets of a group's members differ in, as arrays the group's loss takes
    (:func:`with_values`): each hidden layer's dropout rate ``(L,)``, the label smoothing
    ``()`` and any class weights ``(K,)`` (``balanced`` ones follow each seed's split)."""
    values = {
        "dropout": jnp.asarray(net.dropout_rates),
        "label_smoothing": jnp.asarray(net.label_smoothing),
    }
    if net.class_weight is not None:
        values["class_weight"] = jnp.asarray(net.class_weight)
    return values


def with_values(net: nn.MLP, values: dict[str, jax.Array]) -> nn.MLP:
    """``net`` (a group's) with a member's :func:`net_values` (traced) where ``net`` has
    them on; what is off stays a plain 0, so the program is the one ``fmlp train`` compiles."""
    rates = tuple(
        values["dropout"][i] if rate > 0 else 0.0 for i, rate in enumerate(net.dropout_rates)
    )
    eps = values["label_smoothing"] if net.label_smoothing > 0 else 0.0
    return net._replace(dropout=rates, label_smoothing=eps, class_weight=values.get("class_weight"))


# ----------------------------------------------------------------------------- training


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


class Grid(NamedTuple):
    """A group's members laid out ``(D, M)``: ``D`` distinct training sets (the members'
    seeds give each its own validation split), ``M`` members on each; ``order[d][m]`` is
    the index in the group of the member at ``(d, m)``."""

    order: list[list[int]]

    @staticmethod
    def of(runs: Sequence[run.Run]) -> Grid:
        by_data: dict[int, list[int]] = {}
        for i, r in enumerate(runs):
            by_data.setdefault(id(r.arrays[0]), []).append(i)
        rows = list(by_data.values())
        if len({len(row) for row in rows}) != 1:  # not rectangular: a training set each
            rows = [[i] for i in range(len(runs))]
        return Grid(rows)

    def stack(self, trees: Sequence[Any]) -> Any:
        """``trees`` (one per member) stacked to leaves of shape ``(D, M, ...)``."""
        return _stack([_stack([trees[i] for i in row]) for row in self.order])

    def member(self, tree: Any, i: int) -> Any:
        d, m = next((d, row.index(i)) for d, row in enumerate(self.order) if i in row)
        return jax.tree.map(lambda leaf: leaf[d, m], tree)


def check_fits(runs: Sequence[run.Run], grid: Grid) -> None:
    """Refuse a group whose members need more memory than the device has free, before
    anything is compiled, saying how many members would fit.

    The estimate: each member's params, gradients, optimizer state and a batch's
    activations forward and backward, and one stacked copy of each of the ``D`` training
    sets.

    Raises:
      ConfigError: saying how many members fit.
    """
    first, tc = runs[0], runs[0].cfg.train
    state_size = sum(a.size for a in jax.tree.leaves((first.state.params, first.state.opt_state)))
    per_member = 4 * (2 * state_size + 2 * tc.batch_size * sum(first.net.sizes))
    data_bytes = sum(a.size * a.dtype.itemsize for a in first.arrays) * len(grid.order)
    free = data.available_memory()
    need = per_member * len(runs) + data_bytes
    if need > free:
        fit = max(0, (free - data_bytes) // per_member)
        raise ConfigError(
            f"sweep: these {len(runs)} members would train in one program needing about "
            f"{need / 2**30:.2g} GiB, more than the {free / 2**30:.2g} GiB free; about {fit} "
            "fit. List fewer values (or --seeds), or use --vectorize never."
        )


class Program(NamedTuple):
    """A group's compiled programs, its data and its members' stacked initial states."""

    epoch: Callable  # (states, active, values, x, y) -> (states, losses (D, M))
    evaluate: Callable  # (params, x_val, y_val) -> validation metrics, each (D, M)
    plateau: Callable | None  # (states, validation losses (D, M)) -> states (schedule: plateau)
    check: Callable | None  # (params, values, keys, x, y) -> engine vs jax.grad errors, (D, M)
    gradients: Callable | None  # (params, values, keys, x, y) -> first-batch grads (histograms)
    arrays: tuple  # (x, y, x_val, y_val), each stacked over the D training sets
    states: train.TrainState  # leaves (D, M, ...)
    values: dict[str, jax.Array]  # the members' net_values, leaves (D, M, ...)
    place: Callable  # a (D, M) array -> on the devices as the states are
    compile_seconds: float


def member_sharding(grid: Grid) -> tuple[Any, Any] | None:
    """On several devices, ``(sharding of (D, M, ...) leaves, of (D, ...) data)`` that split
    the members over every device: the ``M`` axis when the device count divides it, else
    ``D`` (the data too); None on one device or when neither axis divides."""
    devices = jax.devices()
    d, m = np.shape(grid.order)
    if len(devices) == 1:
        return None
    mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
    spec = jax.sharding.PartitionSpec
    if m % len(devices) == 0:
        return jax.NamedSharding(mesh, spec(None, "members")), jax.NamedSharding(mesh, spec())
    if d % len(devices) == 0:
        both = jax.NamedSharding(mesh, spec("members"))
        return both, both
    warnings.warn(
        f"sweep: {d} x {m} members do not split evenly over {len(devices)} devices; they "
        "train on one device.",
        stacklevel=2,
    )
    return None


def on_grid(f: Callable, batched: int) -> Callable:
    """``f`` over ``(D, M)``: its first ``batched`` arguments one per member, its last two
    (the data) one per set, shared by the set's members."""
    inner = jax.vmap(f, in_axes=(0,) * batched + (None, None))
    return jax.vmap(inner, in_axes=0)


def compile_group(runs: Sequence[run.Run], grid: Grid) -> Program:
    """The group's vectorized epoch and validation pass, compiled, and what they run on.

    ``epoch`` trains every ``active`` member one epoch (states and ``active`` laid out
    ``(D, M)`` as ``grid`` says), ``evaluate`` gives each member's validation metrics. Batches
    are gathered from the member's set at each step (no per-member permuted copy of the
    data). On several devices the members are split over them (:func:`member_sharding`).
    """
    first, tc = runs[0], runs[0].cfg.train
    arrays = tuple(
        jnp.stack(column) for column in zip(*(runs[row[0]].arrays for row in grid.order))
    )
    states = grid.stack([r.state for r in runs])
    values = grid.stack([net_values(r.net) for r in runs])
    shardings = member_sharding(grid)
    if shardings is not None:
        states, values = jax.device_put((states, values), shardings[0])
        arrays = jax.device_put(arrays, shardings[1])
    start = time.perf_counter()

    def loss(params: nn.Params, xb: Any, yb: Any, wb: Any, values: Any, **keyword: Any) -> Any:
        return with_values(first.net, values).loss(params, xb, yb, wb, **keyword)

    epoch = train.make_epoch(
        loss, first.optimizer.tx, n=len(first.arrays[0]), batch_size=tc.batch_size,
        gradients=tc.gradients, unroll=tc.unroll, donate=False, permute=False,
        keyed=first.net.stochastic,
    )  # fmt: skip

    def member_epoch(state: train.TrainState, active: Any, values: Any, key: Any, x: Any, y: Any):
        """One member's epoch from its set's ``key``; one that is not ``active`` keeps its state.

        The members of a set share their seed, so the active ones hold the same key (it
        advances by the epoch alone): taking it unbatched draws their order and dropout masks,
        and gathers their batches, once for the set, and their first layer is one matmul.
        """
        new, loss = epoch(state._replace(key=key), x, y, None, values)
        return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state), loss

    def grid_epoch(states: train.TrainState, active: Any, values: Any, x: Any, y: Any) -> tuple:
        first_active = jnp.argmax(active, axis=1)  # each set's key: that of an active member
        keys = jax.vmap(lambda k, j: k[j])(states.key, first_active)
        row = jax.vmap(member_epoch, in_axes=(0, 0, 0, None, None, None))
        return jax.vmap(row)(states, active, values, keys, x, y)

    def place(a: Any) -> Any:
        a = jnp.asarray(a)
        return a if shardings is None else jax.device_put(a, shardings[0])

    active = place(np.ones(np.shape(grid.order), bool))
    x, y, xv, yv = arrays
    vectorized_epoch = (
        jax.jit(grid_epoch, donate_argnums=0).lower(states, active, values, x, y).compile()
    )
    evaluate = train.make_evaluate(first.net, n=len(first.arrays[2]), batch_size=tc.eval_batch_size)
    vectorized_evaluate = jax.jit(on_grid(evaluate, 1)).lower(states.params, xv, yv).compile()
    plateau = None
    if first.optimizer.plateau is not None:  # each member's scale fed its own validation loss
        losses = place(np.zeros(np.shape(grid.order), np.float32))
        plateau = (
            jax.jit(jax.vmap(jax.vmap(first.optimizer.plateau))).lower(states, losses).compile()
        )

    def on_first_batch(make: Callable) -> Callable:
        """``make``'s program (:func:`fmlp.train.make_gradient_check` or ``make_gradients``)
        for every member, on the first batch of its next epoch, compiled."""
        batch = {
            "n": len(first.arrays[0]),
            "batch_size": tc.batch_size,
            "keyed": first.net.stochastic,
        }

        def member(params: Any, values: Any, key: Any, x: Any, y: Any) -> Any:
            bound = functools.partial(loss, values=values)  # the member's own values
            return make(bound, **batch)(params, x, y, key)

        return jax.jit(on_grid(member, 3)).lower(states.params, values, states.key, x, y).compile()

    check = gradients = None
    if tc.check_gradients_every is not None:
        check = on_first_batch(train.make_gradient_check)
    if first.cfg.run.tensorboard and first.cfg.run.histogram_every is not None:
        gradients = on_first_batch(train.make_gradients)
    return Program(
        vectorized_epoch, vectorized_evaluate, plateau, check, gradients, arrays, states, values,
        place, time.perf_counter() - start,
    )  # fmt: skip


def test_group(members: Sequence[Member]) -> list[dict[str, Any]]:
    """Each member's test metrics (:func:`fmlp.run.evaluate_split`'s) on the params
    :func:`fmlp.run.tested_state` picks, all members in one vectorized pass."""
    runs = [m.run for m in members]
    grid, first = Grid.of(runs), runs[0]
    params = grid.stack([run.tested_state(r).params for r in runs])
    sets = [runs[row[0]].dataset for row in grid.order]
    x, y = jnp.stack([ds.x_test for ds in sets]), jnp.stack([ds.y_test for ds in sets])
    shardings = member_sharding(grid)
    if shardings is not None:
        params, (x, y) = jax.device_put(params, shardings[0]), jax.device_put((x, y), shardings[1])
    evaluate = train.make_evaluate(
        first.net, n=len(sets[0].x_test), batch_size=first.cfg.train.eval_batch_size
    )
    host = jax.device_get(jax.jit(on_grid(evaluate, 1))(params, x, y))
    return [run.host_metrics(grid.member(host, i)) for i in range(len(runs))]


def train_group(members: Sequence[Member], hooks: Sequence[run.Hook], signals: Any) -> float:
    """Train a group's members together for their ``train.epochs``; returns compile seconds.

    After each epoch each training member's slice of the results goes through ``hooks``
    (those of :func:`fmlp.run.fit`); one that raises :class:`TrainingDiverged` is marked
    ``diverged`` and frozen. A member already past an epoch (a resumed sweep) sits it out.
    """
    runs = [m.run for m in members]
    grid = Grid.of(runs)
    program = compile_group(runs, grid)
    (x, y, xv, yv), states = program.arrays, program.states
    first, tc, rc = min(int(r.state.epoch) for r in runs) + 1, runs[0].cfg.train, runs[0].cfg.run
    for number in range(first, tc.epochs + 1):
        active = [m.status == "training" and int(m.run.state.epoch) < number for m in members]
        if not any(active):
            break
        start = time.perf_counter()
        active_grid = program.place(grid.stack(active))
        states, losses = program.epoch(states, active_grid, program.values, x, y)
        device = {"train_loss": losses, **program.evaluate(states.params, xv, yv)}
        on_batch = (states.params, program.values, states.key, x, y)
        if program.check is not None and number % tc.check_gradients_every == 0:
            device["gradient_check"] = program.check(*on_batch)
        if program.gradients is not None and number % rc.histogram_every == 0:
            device["weights"], device["gradients"] = states.params, program.gradients(*on_batch)
        if program.plateau is not None:
            states = program.plateau(states, device["loss"])
        host = jax.device_get(device)
        elapsed = time.perf_counter() - start
        for i, m in enumerate(members):
            if not active[i]:
                continue
            m.run.state = grid.member(states, i)
            row_host = grid.member(host, i)
            row_host["lr"] = float(m.run.optimizer.learning_rate(m.run.state))
            result = run.EpochResult(
                number, row_host, run.metrics_row(m.run, number, row_host, elapsed), elapsed
            )
            m.seconds.append(elapsed)
            try:
                for hook in hooks:
                    hook(m.run, result)
            except TrainingDiverged as err:
                m.status, m.summary["error"] = "diverged", str(err)
            if m.run.stopped is not None:
                m.status = "stopped"
        signals.check()
    for m in members:
        if m.status == "training":
            m.status = "done"
    return program.compile_seconds


# ----------------------------------------------------------------------------- the sweep


class SweepDir:
    """A sweep's directory: ``sweep.yaml`` (what was swept), ``sweep.csv`` (one row per
    member), ``plots/validation.png`` and ``members/<i>/``, each a run directory."""

    SPEC, TABLE, SUMMARY = "sweep.yaml", "sweep.csv", "sweep.json"
    PLOT, MEMBERS = "plots/validation.png", "members"

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def member(self, i: int) -> Path:
        return self.path / self.MEMBERS / str(i)

    def write_spec(self, spec: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        run.replace_file(self.path / self.SPEC, yaml.safe_dump(spec, sort_keys=False).encode())

    def read_spec(self) -> dict[str, Any]:
        try:
            return yaml.safe_load((self.path / self.SPEC).read_text())
        except OSError as err:
            raise RunDirectoryError(
                f"--resume {self.path}: {self.SPEC} cannot be read ({err.strerror}); it is not "
                "a sweep directory, or the sweep never started."
            ) from None

    def write_table(self, rows: Sequence[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        run.replace_file(self.path / self.TABLE, buffer.getvalue().encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        run.replace_file(self.path / self.SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())

    def best_members(self, top: int) -> list[Path]:
        """The run directories of the ``top`` best members (by validation metric) that did
        not diverge."""
        rows = [row for row in self.read_table() if row["status"] != "diverged"]
        if top < 1 or not rows:
            raise RunDirectoryError(
                f"--top {top}: {self.path} has {len(rows)} member(s) to average; give --top "
                f"between 1 and {len(rows)}."
            )
        return [Path(row["run_dir"]) for row in rows[:top]]

    def read_table(self) -> list[dict[str, str]]:
        try:
            with (self.path / self.TABLE).open(newline="") as f:
                return list(csv.DictReader(f))
        except OSError as err:
            raise RunDirectoryError(
                f"{self.path}: {self.TABLE} cannot be read ({err.strerror}); is it a finished "
                "sweep directory (fmlp sweep ... --out DIR)?"
            ) from None


SEARCHES = ("grid", "random", "optuna")
"""``--search``: every point of the grid, or ``--trials`` points drawn by Optuna's random or
TPE sampler, ``--batch`` trials at a time trained in one program (ask and tell)."""


def sweep(
    source: run.Source,
    grid: Mapping[str, Sequence[str]] | Sequence[str],
    *,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    out: PathLike | None = None,
    vectorize: str | Sequence[str] = "auto",
    top: int = 3,
    resume: PathLike | None = None,
    search: str = "grid",
    trials: int = 16,
    batch: int = 8,
) -> dict[str, Any]:
    """Train every member of a grid (or of a search); write the sweep directory.

    Args:
      source: the base config (a Config, dict or YAML path); ``overrides`` apply to it.
      grid: ``{key: [values]}`` or ``["key=v1,v2", ...]`` (:func:`parse_grid`); for a
        search a value may also be a range ``low..high`` (``low..high:log`` log-uniform).
      seeds: each point is trained with this many seeds (``train.seed`` and up).
      out: the sweep directory (default ``run.out_dir/sweep-<timestamp>``).
      vectorize: ``auto`` (one program per group), ``never`` (one member at a time), or the
        swept keys that must be vectorized (``"KEY,KEY"`` or a list): as ``auto``, and an
        error naming a key whose values cannot train in one program.
      top: the ensemble of this many best members is evaluated on the test split.
      resume: an interrupted grid sweep's directory to continue; the base config and the
        members are read from its ``sweep.yaml``.
      search: ``grid``, ``random`` or ``optuna`` (TPE) (:data:`SEARCHES`).
      trials, batch: a search's number of points, and how many are asked for (and trained
        together) at a time.

    Returns:
      ``{"dir": path, "members": rows, "summary": ...}``: one row per member (its overrides,
      status, best epoch, validation and test metrics), sorted best first by the validation
      metric, and ``sweep.json``'s content (the ``top`` ensemble's test metrics).

    Raises:
      fmlp.errors.InputError: a bad key or value (naming the member's override), a
        ``vectorize`` key that cannot be vectorized, or a bad sweep directory; a new sweep
        that cannot start leaves no directory behind.
    """
    if not isinstance(vectorize, str):
        vectorize = ",".join(vectorize)
    required_keys(vectorize)
    if search not in SEARCHES:
        raise ConfigError(f"sweep: --search must be one of {', '.join(SEARCHES)}, got {search!r}.")
    if resume is not None:
        directory = SweepDir(resume)
        spec = directory.read_spec()
        if spec.get("search", "grid") != "grid":
            raise RunDirectoryError(
                f"--resume {resume}: a {spec['search']} search cannot be resumed (its sampler's "
                "state is not saved); its finished members are runs of their own."
            )
        base, points, vectorize = config.from_dict(spec["base"]), spec["members"], spec["vectorize"]
        batches = iter([(points, None)])
    else:
        if not isinstance(grid, Mapping):
            grid = parse_grid(grid)
        ranges = {k: _range(k, v) for k, v in grid.items() if search != "grid"}
        fixed = [f"{k}={v[0]}" for k, v in grid.items() if len(v) == 1 and not ranges.get(k)]
        grid = {k: list(v) for k, v in grid.items() if len(v) > 1 or ranges.get(k)}
        base = config.resolve(source, [*overrides, *fixed])
        if search == "grid":
            points = members_of(grid, seeds, base.train.seed)
            for point in points:  # every member valid before anything is written
                _member_config(base, point)
            batches = iter([(points, None)])
        else:
            batches = _asked(base, grid, ranges, search, trials, batch, seeds)
        required_keys(vectorize, {*grid, *(["train.seed"] if seeds > 1 else [])})
        stamp = time.strftime("%Y%m%d-%H%M%S")
        directory = SweepDir(out if out is not None else Path(base.run.out_dir) / f"sweep-{stamp}")
        if directory.path.exists() and any(directory.path.iterdir()):
            raise RunDirectoryError(
                f"--out {directory.path} is not empty; choose a new directory for the sweep, "
                f"or continue an interrupted one with --resume {directory.path}."
            )
    members: list[Member] = []
    groups = 0
    with run.Signals() as signals:
        shared: dict[str, Any] = {}
        for points, tell in batches:
            spec = {
                "base": config.to_dict(base), "search": search, "vectorize": vectorize,
                "members": [m.overrides for m in members] + list(points),
            }  # fmt: skip
            if resume is None:
                directory.write_spec(spec)
            new, count = _train_points(
                points, len(members), base, directory, vectorize, resume, signals, shared
            )
            members += new
            groups += count
            if tell is not None:
                tell(new)
    rows = _table(members)
    directory.write_table(rows)
    _plot(directory, members)
    best = [members[row["member"]] for row in rows if row["status"] != "diverged"]
    summary = {"members": len(members), "groups": groups, "top": min(top, len(best))}
    summary |= ensemble_test(best[:top]) if best else {}
    directory.write_summary(summary)
    return {"dir": str(directory.path), "members": rows, "summary": summary}


def _train_points(
    points: Sequence[dict[str, str]],
    first: int,
    base: config.Config,
    directory: SweepDir,
    vectorize: str,
    resume: PathLike | None,
    signals: run.Signals,
    shared: dict[str, Any],
) -> tuple[list[Member], int]:
    """Set up, check and train the members ``first, first + 1, ...`` of ``points``; returns
    them and the number of programs (groups) they trained in."""
    members: list[Member] = []
    boards: dict[int, run.TensorBoard] = {}
    started = False
    try:
        for i, point in enumerate(points, start=first):
            cfg = _member_config(base, point)
            path = directory.member(i)
            again = resume is not None and run.RunDir(path).holds_run()
            member_run = run.set_up(
                cfg, (), out=None if again else path, resume=path if again else None,
                signals=signals, shared=shared,
            )  # fmt: skip
            members.append(Member(i, dict(point), member_run))
            if member_run.stopped is not None:  # a resumed member early stopping had ended
                members[-1].status = "stopped"
        groups: dict[str, list[Member]] = {}
        for m in members:
            key = group_key(m.run) if vectorize != "never" else str(m.index)
            groups.setdefault(key, []).append(m)
        for key in required_keys(vectorize):
            check_vectorized(key, members)
        for group in groups.values():
            runs = [m.run for m in group]
            check_fits(runs, Grid.of(runs))
        started = True
        boards = {id(m.run): run.TensorBoard(m.run) for m in members}  # run.tensorboard

        def board(member_run: run.Run, result: run.EpochResult) -> None:
            boards[id(member_run)].hook(member_run, result)

        hooks = [
            run.stop_if_diverged, run.log_metrics, run.check_parity, run.stop_early,
            run.save_checkpoint, board,
        ]  # fmt: skip
        for group in groups.values():
            compile_seconds = train_group(group, hooks, signals)
            tested = [m for m in group if m.status != "diverged"]
            for m, test in zip(tested, test_group(tested) if tested else []):
                m.summary = run.finish(m.run, compile_seconds, m.seconds, test)[1]["summary"]
                boards[id(m.run)].hparams(m.run, m.summary)
    finally:
        for m in members:
            if id(m.run) in boards:
                boards[id(m.run)].close()
            m.run.ckpt.close()
            m.run.dir.unlock()
        if not started and resume is None and first == 0:  # a sweep that cannot start
            shutil.rmtree(directory.path, ignore_errors=True)
    return members, len(groups)


def _range(key: str, values: Sequence[str]) -> tuple[float, float, bool] | None:
    """``low..high`` (``:log``) as ``(low, high, log)``; None for a list of values."""
    if len(values) != 1 or ".." not in values[0]:
        return None
    text, _, scale = values[0].partition(":")
    low, _, high = text.partition("..")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        lo = hi = math.nan
    if not lo < hi or scale not in ("", "log") or (scale == "log" and lo <= 0):
        raise ConfigError(
            f"sweep: {key}={values[0]} is not a range low..high with low < high (low..high:log "
            "with 0 < low for a log-uniform one), e.g. optimizer.learning_rate=1e-3..1e-1:log"
        )
    return lo, hi, scale == "log"


def _asked(
    base: config.Config,
    grid: Mapping[str, Sequence[str]],
    ranges: Mapping[str, tuple[float, float, bool] | None],
    search: str,
    trials: int,
    batch: int,
    seeds: int,
) -> Any:
    """Batches of ``(points, tell)`` from an Optuna study (ask and tell): ``batch`` trials
    at a time (each with ``seeds`` seeds); ``tell(members)`` reports their best validation
    metric (the mean over seeds; a diverged trial fails)."""
    if trials < 1 or batch < 1:
        raise ConfigError(f"sweep: --trials and --batch must be positive, got {trials}, {batch}.")
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            f"sweep: --search {search} needs optuna: pip install 'fmlp[search]' (README's "
            "setup, scripts/setup.sh, installs it)."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = base.train.seed
    sampler = optuna.samplers.RandomSampler(seed) if search == "random" else None
    sampler = sampler or optuna.samplers.TPESampler(seed=seed)
    maximize = nn.HEADS[base.model.loss].task != "regression"
    study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=sampler)
    metric = "accuracy" if maximize else "mse"
    done = 0
    while done < trials:
        asked = [study.ask() for _ in range(min(batch, trials - done))]
        points = []
        for trial in asked:
            point = {}
            for key, values in grid.items():
                r = ranges.get(key)
                if r is None:
                    point[key] = trial.suggest_categorical(key, list(values))
                else:
                    point[key] = repr(trial.suggest_float(key, r[0], r[1], log=r[2]))
            _member_config(base, point)
            points += members_of({k: [v] for k, v in point.items()}, seeds, seed)

        def tell(members: Sequence[Member], asked: list = asked) -> None:
            for t, trial in enumerate(asked):
                mine = members[t * seeds : (t + 1) * seeds]
                best = [_best(m, metric) for m in mine]
                if any(m.status == "diverged" for m in mine) or None in best:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, float(np.mean([value for _, value in best])))

        yield points, tell
        done += len(asked)


def _best(m: Member, metric: str) -> tuple[int, float] | None:
    """``(epoch, value)`` of a member's best validation ``metric`` (accuracy: highest; mse:
    lowest, the first of equals); None before any validation."""
    scored = [(row["epoch"], row[f"val_{metric}"]) for row in m.run.history]
    scored = [(epoch, value) for epoch, value in scored if value is not None]
    if not scored:
        return None
    pick = max if metric == "accuracy" else min
    return pick(scored, key=lambda point: point[1])


def _member_config(base: config.Config, point: Mapping[str, str]) -> config.Config:
    try:
        return config.resolve(base, [f"{k}={v}" for k, v in point.items()])
    except ConfigError as err:
        shown = " ".join(f"{k}={v}" for k, v in point.items())
        raise ConfigError(f"sweep member {shown}: {err}") from None


def _table(members: Sequence[Member]) -> list[dict[str, Any]]:
    """One row per member, best validation metric first (accuracy: highest; mse: lowest)."""
    rows = []
    for m in members:
        metric = m.run.metric
        best_epoch, best_value = _best(m, metric) or (None, None)
        rows.append(
            {"member": m.index, **m.overrides, "status": m.status,
             "epochs": len(m.run.history),
             "best_epoch": best_epoch,
             f"best_val_{metric}": best_value,
             f"test_{metric}": m.summary.get(f"test_{metric}"),
             "test_loss": m.summary.get("test_loss"),
             "run_dir": str(m.run.dir)}
        )  # fmt: skip
    metric = members[0].run.metric if members else "accuracy"
    sign = -1 if metric == "accuracy" else 1

    def order(row: dict[str, Any]) -> float:
        value = row[f"best_val_{metric}"]
        return math.inf if value is None or not math.isfinite(value) else sign * value

    return sorted(rows, key=order)


def _plot(directory: SweepDir, members: Sequence[Member]) -> None:
    from fmlp import viz

    curves = {
        " ".join(f"{k.split('.')[-1]}={v}" for k, v in m.overrides.items())
        or f"member {m.index}": [
            (row["epoch"], row.get(f"val_{m.run.metric}")) for row in m.run.history
        ]
        for m in members
    }
    viz.sweep_curves(curves, directory.path / directory.PLOT, metric=members[0].run.metric)


def ensemble_test(members: Sequence[Member]) -> dict[str, Any]:
    """The test metric of the mean of ``members``' probabilities (or outputs)."""
    first = members[0].run
    if first.net.task == "multilabel":
        return {}  # averaged label probabilities have no single ensemble accuracy here
    y = first.dataset.y_test
    outputs = 0.0
    for m in members:
        if not np.array_equal(m.run.dataset.y_test, y):
            return {}  # members tested on other data: no common ensemble
        outputs = outputs + np.asarray(m.run.net.apply(m.run.state.params, m.run.dataset.x_test))
    outputs = outputs / len(members)
    if first.metric == "accuracy":
        return {"ensemble_test_accuracy": float(np.mean(np.argmax(outputs, axis=1) == y))}
    return {"ensemble_test_mse": float(np.mean(np.square(outputs - y)))}
