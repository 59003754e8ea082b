"""Pictures: a run's training curves and confusion matrix as PNG files (matplotlib), and
computation graphs with forward values and gradients as DOT source (drawn by Graphviz).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fmlp import engine
from fmlp.errors import GraphvizError


def _figure(**kwargs: Any) -> Any:
    # Imported here so drawing graphs does not load matplotlib; no pyplot: no global backend.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def training_curves(
    history: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], *, metric: str
) -> list[Path]:
    """Write ``loss.png`` (train and validation loss) and ``<metric>.png`` per epoch.

    Args:
      history: one metrics dict per epoch, as in ``metrics.jsonl``.
      out_dir: folder for the PNG files.
      metric: ``accuracy`` or ``mse``; plotted from the ``val_<metric>`` entries.

    Returns:
      The paths written.
    """
    out_dir = Path(out_dir)
    epochs = [m["epoch"] for m in history]
    paths = []
    for name, series in [
        ("loss", {"train": "train_loss", "validation": "val_loss"}),
        (metric, {"validation": f"val_{metric}"}),
    ]:
        fig = _figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for label, key in series.items():
            values = [m.get(key) for m in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], "o-", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines:  # no validation split: an empty plot, and no legend to draw
            ax.legend()
        fig.tight_layout()
        paths.append(out_dir / f"{name}.png")
        fig.savefig(paths[-1], dpi=100)
    return paths


def sweep_curves(
    curves: dict[str, Sequence[tuple[int, float | None]]],
    path: str | os.PathLike[str],
    *,
    metric: str,
) -> Path:
    """Write every sweep member's validation ``metric`` per epoch on one axis as a PNG.

    ``curves``: label -> ``[(epoch, value), ...]`` (``None`` values are gaps).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for label, points in curves.items():
        epochs = [e for e, _ in points]
        ax.plot(epochs, [np.nan if v is None else v for _, v in points], ".-", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    if 0 < len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def confusion_matrix(
    matrix: np.ndarray, path: str | os.PathLike[str], *, labels: Sequence[str] | None = None
) -> Path:
    """Write a confusion matrix (rows: true class, columns: predicted class) as a PNG."""
    matrix = np.asarray(matrix)
    k = matrix.shape[0]
    labels = list(labels) if labels is not None else [str(i) for i in range(k)]
    fig = _figure(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


# ----------------------------------------------------------------------------- computation graphs
# The lecture's circuit figures: one node per gate call with its forward value and gradient,
# one leaf per input. :func:`graph` traces with fmlp.engine.trace and writes DOT source in
# the scheme :class:`GraphDrawing` documents.


@dataclasses.dataclass(frozen=True)
class DrawnNode:
    """One node of a :class:`GraphDrawing`; the fields are the DOT attributes (see above).

    ``value`` and ``grad`` are formatted exactly (shortest round-trip decimals), or None when
    the array has more than ``max_elements`` elements or (``grad``) has no gradient.
    """

    id: str
    kind: str  # "input", "constant" or "gate"
    name: str
    gate: str | None
    dims: tuple[int, ...]
    dtype: str
    value: str | None
    grad: str | None
    output: bool
    label: str


class Edge(NamedTuple):
    """``source`` is input number ``input`` of the gate node ``target``."""

    source: str
    target: str
    input: int


@dataclasses.dataclass(frozen=True)
class GraphDrawing:
    """A drawn computation graph: its DOT source and the nodes and edges in it.

    ``nodes`` are in drawing order (argument leaves, then each gate after any literal
    constants it consumes); ``edges`` go gate by gate, input by input.

    The DOT source has a fixed scheme, so that programs (and tests) can read it back::

        digraph fmlp {
          rankdir="LR";
          node [fontname="Helvetica", fontsize="11"];
          n0 [label="x\\n()\\nvalue -2\\ngrad -4", kind="input", name="x", dims="()", ...];
          n3 [label="+\\n()\\nvalue 3\\ngrad -4", kind="gate", name="+", gate="add", ...];
          n0 -> n3 [input="0"];
        }

    * One statement per line. A node line is ``ID [ATTRS];`` where ``ID`` is ``n<k>`` (``k``
      is the value's id on the engine's tape: inputs first, then gate outputs in forward
      order) or ``c<k>`` (a constant: the non-differentiated arguments first, then literals
      in order of first use). An edge line is ``SRC -> DST [input="<i>"];``: ``SRC`` is input
      number ``i`` of the gate ``DST``.
    * ``ATTRS`` are ``key="value"`` pairs separated by ``, ``; in every value a backslash
      and a double quote are escaped with a backslash, and ``label`` joins lines with ``\\n``.
    * Node attributes, in this order: ``label`` (name, shape, then ``value ...`` and
      ``grad ...`` rounded to 4 significant digits); ``kind`` (``input``: a differentiated
      argument leaf; ``constant``: an argument leaf that is not differentiated, such as
      integer labels, or a literal; ``gate``: a gate call); ``name`` (leaves: the argument's
      name and pytree path, e.g. ``params[0]['W']``, or ``const`` for a literal; gates: the
      symbol drawn, e.g. ``*``); ``gate`` (gates only: the registered name, e.g.
      ``multiply``); ``dims`` (the array's shape, e.g. ``(2, 32)``; not ``shape``, which is
      Graphviz's node outline); ``dtype``; ``value`` and ``grad`` (exact shortest round-trip
      decimals, nested in ``[...]`` for arrays; only for arrays of at most ``max_elements``
      elements, and ``grad`` only where a gradient exists); ``output="true"`` and
      ``peripheries`` on the function's output; Graphviz's ``shape`` and ``style`` last.
    """

    dot: str
    nodes: tuple[DrawnNode, ...]
    edges: tuple[Edge, ...]

    def node(self, id: str) -> DrawnNode:
        """The node with DOT id ``id``, e.g. ``"n3"``."""
        for n in self.nodes:
            if n.id == id:
                return n
        raise KeyError(f"no node {id!r} in this graph; ids are {[n.id for n in self.nodes]}.")

    def render(self, path: str | os.PathLike[str]) -> Path:
        """Write the graph to ``path``: ``.dot``/``.gv`` as DOT source, ``.svg``/``.png``/
        ``.pdf`` drawn by Graphviz's ``dot`` program.

        Raises:
          ValueError: another suffix.
          GraphvizError: ``dot`` is not installed (``apt-get install graphviz``) or failed.
        """
        path = Path(path)
        fmt = path.suffix.lower().lstrip(".")
        if fmt in ("dot", "gv"):
            path.write_text(self.dot, encoding="utf-8")
            return path
        if fmt not in _RENDER_FORMATS:
            raise ValueError(
                f"Cannot draw a graph to {str(path)!r}: expected a file ending in .dot, .gv, "
                f"{', '.join('.' + f for f in _RENDER_FORMATS)}."
            )
        dot = shutil.which("dot")
        if dot is None:
            raise GraphvizError(
                f"Drawing {path.name} needs Graphviz's `dot` program, which is not installed; "
                "install it with `apt-get install graphviz` (or `brew install graphviz`), "
                "or write the DOT source to a .dot file instead."
            )
        result = subprocess.run(
            [dot, f"-T{fmt}"], input=self.dot.encode("utf-8"), capture_output=True, check=False
        )
        if result.returncode != 0:
            message = result.stderr.decode("utf-8", "replace").strip()
            raise GraphvizError(f"Graphviz `dot -T{fmt}` failed: {message}")
        path.write_bytes(result.stdout)
        return path


_RENDER_FORMATS = ("svg", "png", "pdf")


def graph(
    f: Callable[..., Any],
    *args: Any,
    names: Sequence[str] | None = None,
    max_elements: int = 4,
) -> GraphDrawing:
    """Trace ``f(*args)`` and draw its computation graph with forward values and gradients.

    Every gate call becomes a node showing its gate's ``symbol`` (see
    :func:`fmlp.engine.register`), output shape and, for arrays of at most ``max_elements``
    elements, its value and the gradient of ``f``'s (scalar) output with respect to it; each
    argument leaf becomes an input node named after ``f``'s parameter and its pytree path,
    each non-float argument (e.g. integer labels) a constant.

    Args:
      f: a function written with gates, as for :func:`fmlp.grad`.
      *args: its arguments (pytrees of arrays); float leaves are differentiated.
      names: one name per positional argument, instead of ``f``'s parameter names; a leaf
        is named by its argument's name followed by its pytree path, e.g. ``params[0]['W']``.
      max_elements: largest array size whose value and gradient are written out.

    Returns:
      A :class:`GraphDrawing`; ``.dot`` is the DOT source, ``.render("f.svg")`` draws it.

    Example (the lecture's circuit):

    >>> import fmlp.viz
    >>> g = fmlp.viz.graph(lambda x, y, z: (x + y) * z, -2.0, 5.0, -4.0)
    >>> [(n.name, n.value, n.grad) for n in g.nodes]
    [('x', '-2', '-4'), ('y', '5', '-4'), ('z', '-4', '3'), ('+', '3', '-4'), ('*', '-12', '1')]
    """
    if max_elements < 0:
        raise ValueError(f"max_elements must be >= 0, got {max_elements}.")
    arg_names = _argument_names(f, len(args), names)
    traced = engine.trace(f, *args)
    nodes: list[DrawnNode] = []
    edges: list[Edge] = []
    constants: list[tuple[Any, str]] = []  # (object, node id), matched by identity

    def leaf_name(path: str) -> str:
        index, rest = re.fullmatch(r"\[(\d+)\](.*)", path).groups()
        return arg_names[int(index)] + rest

    def add_node(id: str, kind: str, name: str, gate: str | None, value: Any, grad: Any) -> None:
        value = np.asarray(value)
        small = value.size <= max_elements
        shown = {
            "value": _format(value) if small else None,
            "grad": _format(np.asarray(grad)) if small and grad is not None else None,
        }
        lines = [name, str(value.shape)]
        for k, v in (("value", value), ("grad", grad)):
            if shown[k] is not None:
                lines.append(f"{k} {_format(np.asarray(v), compact=True)}")
        output = id == f"n{traced.output}"
        label = "\n".join(lines)
        dtype = str(value.dtype)
        nodes.append(
            DrawnNode(id, kind, name, gate, value.shape, dtype, *shown.values(), output, label)
        )

    for node in traced.nodes:
        if node.gate is None:
            add_node(f"n{node.id}", "input", leaf_name(node.path), None, node.value, node.grad)
    for path, value in traced.constants:
        constants.append((value, f"c{len(constants)}"))
        add_node(constants[-1][1], "constant", leaf_name(path), None, value, None)
    for node in traced.nodes:
        if node.gate is None:
            continue
        for i, (parent, x) in enumerate(zip(node.parents, node.inputs)):
            if parent is not None:
                edges.append(Edge(f"n{parent}", f"n{node.id}", i))
                continue
            source = next((cid for obj, cid in constants if obj is x), None)
            if source is None:  # a literal, e.g. the 2.0 in `2.0 * x`
                source = f"c{len(constants)}"
                constants.append((x, source))
                add_node(source, "constant", "const", None, x, None)
            edges.append(Edge(source, f"n{node.id}", i))
        add_node(f"n{node.id}", "gate", node.symbol, node.gate, node.value, node.grad)
    return GraphDrawing(_to_dot(nodes, edges), tuple(nodes), tuple(edges))


def _argument_names(f: Callable[..., Any], n: int, names: Sequence[str] | None) -> list[str]:
    """One name per positional argument: ``names``, else ``f``'s parameters, else ``arg<i>``."""
    if names is not None:
        names = list(names)
        if len(names) != n:
            raise ValueError(f"names: expected one name per argument ({n}), got {len(names)}.")
        return names
    try:
        parameters = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):  # some builtins and C functions have no signature
        parameters = []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in parameters if p.kind in kinds]
    star = next((p.name for p in parameters if p.kind == inspect.Parameter.VAR_POSITIONAL), None)
    result = []
    for i in range(n):
        if i < len(positional):
            result.append(positional[i])
        elif star is not None:
            result.append(f"{star}[{i - len(positional)}]")
        else:
            result.append(f"arg{i}")
    return result


def _format(a: np.ndarray, *, compact: bool = False) -> str:
    """``-12`` for a scalar, ``[[1, 2.5], [3, 4]]`` for an array; exact, or 4 digits."""
    if a.ndim > 0:
        return "[" + ", ".join(_format(row, compact=compact) for row in a) + "]"
    x = a[()]
    if isinstance(x, np.floating) or np.issubdtype(a.dtype, np.floating):
        s = f"{float(x):.4g}" if compact else str(x)
        return s[:-2] if s.endswith(".0") else s
    return str(x)


def _quote(s: str) -> str:
    """A DOT double-quoted string: backslash and quote escaped, newlines as ``\\n``."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _to_dot(nodes: Sequence[DrawnNode], edges: Sequence[Edge]) -> str:
    outlines = {"input": ("ellipse", "solid"), "constant": ("ellipse", "dashed")}
    lines = [
        "digraph fmlp {",
        '  rankdir="LR";',
        '  node [fontname="Helvetica", fontsize="11"];',
    ]
    for n in nodes:
        attrs = {"label": n.label, "kind": n.kind, "name": n.name}
        if n.gate is not None:
            attrs["gate"] = n.gate
        attrs |= {"dims": str(n.dims), "dtype": n.dtype}
        attrs |= {k: v for k, v in (("value", n.value), ("grad", n.grad)) if v is not None}
        if n.output:
            attrs |= {"output": "true", "peripheries": "2"}
        shape, style = outlines.get(n.kind, ("box", "rounded"))
        attrs |= {"shape": shape, "style": style}
        lines.append(f"  {n.id} [{', '.join(f'{k}={_quote(v)}' for k, v in attrs.items())}];")
    lines += [f'  {e.source} -> {e.target} [input="{e.input}"];' for e in edges]
    return "\n".join([*lines, "}"]) + "\n"
