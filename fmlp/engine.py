"""fmlp's own reverse-mode engine: forward through gates on a tape, backward right to left.

The lecture's algorithm, for any function written with gates:

1. *Forward.* Every input we differentiate is wrapped in a :class:`Tracked` value. Each gate
   called on a tracked value computes its forward and appends a record to the tape: the gate,
   its inputs, its output and static parameters, i.e. everything its VJP needs.
2. *Backward.* Seed the output with ``df/df = 1`` and walk the tape from the last record to
   the first. Each record's VJP turns the cotangent of its output into cotangents of its
   inputs; a value used several times (fan-out) receives the sum, and a cotangent of a
   broadcast input is summed back to the input's shape in :func:`unbroadcast`.

The engine owns the notion of a gate (:class:`Gate`, :data:`REGISTRY`, :func:`register`) but
knows no gate by name: :mod:`fmlp.gates` is the table of fmlp's gates. It never calls
``jax.grad`` or ``jax.vjp``: those are the oracle the tests compare it with. Everything here
runs at trace time, so under ``jax.jit`` forward and backward become a single XLA program,
and ``jax.vmap``/``lax.scan`` compose with it as with any JAX function. An operation the
engine cannot differentiate raises :class:`NonDifferentiableError` naming it, never a silent
zero. This module imports nothing of fmlp but :mod:`fmlp.errors`.
"""

from __future__ import annotations

import dataclasses
import linecache
import re
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmlp.errors import UnknownGateError

Array = jax.Array
PyTree = Any


class NonDifferentiableError(TypeError):
    """A tracked value reached an operation that is not a gate (so it has no backward rule)."""


@dataclasses.dataclass(frozen=True)
class _Record:
    gate: Gate
    params: dict[str, Any]
    inputs: tuple[Any, ...]
    parents: tuple[int | None, ...]  # tape id of each tracked input, None for constants
    out: Array
    out_id: int


class _Tape:
    """The forward record of one differentiated call."""

    def __init__(self) -> None:
        self.records: list[_Record] = []
        self.size = 0
        self.open = True

    def track(self, value: Any) -> Tracked:
        self.size += 1
        return Tracked(value, self, self.size - 1)

    def backward(self, seeds: Sequence[tuple[int, Array]]) -> dict[int, Array]:
        """Walk the records right to left; return the cotangent of every reached tape id."""
        cts: dict[int, Array] = {}
        for node, ct in seeds:
            _accumulate(cts, node, ct)
        for rec in reversed(self.records):
            g = cts.get(rec.out_id)
            if g is None:  # this gate's output does not reach the differentiated output
                continue
            in_cts = rec.gate.vjp(g, rec.out, *rec.inputs, **rec.params)
            if len(in_cts) != len(rec.inputs):
                raise TypeError(
                    f"VJP of gate {rec.gate.name!r} returned {len(in_cts)} cotangents for "
                    f"{len(rec.inputs)} inputs; return one per input (None for no cotangent)."
                )
            for parent, x, ct in zip(rec.parents, rec.inputs, in_cts):
                if parent is not None and ct is not None:
                    _accumulate(cts, parent, _fit(ct, x, rec.gate.name))
        return cts


def _accumulate(cts: dict[int, Array], node: int, ct: Array) -> None:
    cts[node] = cts[node] + ct if node in cts else ct


def unbroadcast(ct: Array, shape: tuple[int, ...]) -> Array:
    """Sum a cotangent of broadcast shape back to the ``shape`` of the input that was broadcast.

    Args:
      ct: cotangent of shape ``(*lead, *s)`` where ``s`` broadcasts to the output like ``shape``.
      shape: the input's shape, e.g. ``(K,)`` or ``(1, K)`` for a bias added to ``(B, K)``.

    Returns:
      Array of ``shape``: ``ct`` summed over the leading axes and over axes where ``shape`` is 1.
    """
    shape = tuple(shape)
    if ct.shape == shape:
        return ct
    lead = ct.ndim - len(shape)
    tail = ct.shape[lead:]
    if lead < 0 or any(n != 1 and n != m for n, m in zip(shape, tail)):
        raise ValueError(f"Cannot sum a cotangent of shape {ct.shape} back to shape {shape}.")
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 != tail[i])
    return jnp.reshape(jnp.sum(ct, axis=axes), shape)


def _fit(ct: Array, x: Any, gate_name: str) -> Array:
    """The cotangent of input ``x``, in ``x``'s shape and dtype."""
    ct = jnp.asarray(ct)
    try:
        ct = unbroadcast(ct, jnp.shape(x))
    except ValueError as e:
        raise ValueError(f"VJP of gate {gate_name!r}: {e}") from None
    return ct.astype(jnp.result_type(x))


# ----------------------------------------------------------------------------- tracked values


class Tracked:
    """A value the engine differentiates: an array (or tracer) plus its place on the tape.

    Gates and the Python operators ``+ - * / @ **``, unary ``-``, ``abs()`` and indexing
    ``x[...]`` (mapped to gates by :func:`define_operators`) work on it; every other operation
    raises :class:`NonDifferentiableError` naming that operation and the nearest gate.
    """

    __slots__ = ("_id", "_tape", "value")

    def __init__(self, value: Array, tape: _Tape, node: int) -> None:
        self.value = value
        self._tape = tape
        self._id = node

    shape = property(lambda self: jnp.shape(self.value), doc="Shape of the value.")
    dtype = property(lambda self: jnp.result_type(self.value), doc="dtype of the value.")
    ndim = property(lambda self: len(jnp.shape(self.value)), doc="Number of axes.")
    size = property(lambda self: int(np.prod(jnp.shape(self.value))), doc="Number of elements.")

    def __repr__(self) -> str:
        return f"Tracked(shape={self.shape}, dtype={self.dtype})"

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # numpy routes `ndarray + tracked` here as np.add: the operator's gate handles it.
        operator = _UFUNC_OPERATORS.get(ufunc.__name__)
        if method == "__call__" and not kwargs and operator in _OPERATOR_GATES:
            return _OPERATOR_GATES[operator](*inputs)
        raise non_differentiable(f"numpy.{ufunc.__name__}", ufunc.__name__)

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise non_differentiable("conversion to a numpy array")

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        raise non_differentiable(f"numpy.{func.__name__}", func.__name__)

    def __float__(self) -> float:
        raise non_differentiable("float()")

    def __int__(self) -> int:
        raise non_differentiable("int()")

    def __index__(self) -> int:
        raise non_differentiable("use as an index")

    def __complex__(self) -> complex:
        raise non_differentiable("complex()")

    def __bool__(self) -> bool:
        raise non_differentiable(
            "bool() (a Python `if`, `while`, `and`, `or` or `not` on its value)"
        )

    def __len__(self) -> int:
        raise non_differentiable("len()")

    def __iter__(self) -> Any:
        raise non_differentiable("iteration")

    def __getattr__(self, name: str) -> Any:
        # Reached for names Tracked does not define. An array method (x.reshape, x.sum) is
        # named; anything else (JAX probes attributes such as .aval) is a plain miss.
        if name in _ARRAY_METHODS:
            raise non_differentiable(f"the array method .{name}()", name)
        raise AttributeError(name)

    def __getitem__(self, index: Any) -> Any:
        raise non_differentiable("indexing/slicing")

    def __setitem__(self, index: Any, value: Any) -> None:
        raise non_differentiable("item assignment")

    __hash__ = object.__hash__


_ARRAY_METHODS = frozenset(
    name
    for name in dir(jax.Array)
    if not name.startswith("_") and callable(getattr(jax.Array, name, None))
)


def _unsupported_operator(symbol: str, name: str) -> Callable[..., Any]:
    def method(self: Tracked, *args: Any) -> Any:
        raise non_differentiable(f"the operator {symbol}", name)

    return method


# Operators without a gate until define_operators maps them; each with the numpy name of its
# operation, which a gate may claim as an alias so that the error suggests it.
for _name, (_symbol, _op) in {
    "__pow__": ("**", "power"), "__rpow__": ("**", "power"), "__mod__": ("%", "remainder"),
    "__rmod__": ("%", "remainder"), "__floordiv__": ("//", "floor_divide"),
    "__rfloordiv__": ("//", "floor_divide"), "__abs__": ("abs()", "absolute"),
    "__lt__": ("<", "less"), "__le__": ("<=", "less_equal"), "__gt__": (">", "greater"),
    "__ge__": (">=", "greater_equal"), "__eq__": ("==", "equal"), "__ne__": ("!=", "not_equal"),
    "__and__": ("&", "logical_and"), "__or__": ("|", "logical_or"),
    "__xor__": ("^", "logical_xor"), "__invert__": ("~", "logical_not"),
    "__round__": ("round()", "round"),
}.items():  # fmt: skip
    setattr(Tracked, _name, _unsupported_operator(_symbol, _op))


_UFUNC_OPERATORS = {
    "add": "__add__", "subtract": "__sub__", "multiply": "__mul__", "divide": "__truediv__",
    "matmul": "__matmul__", "negative": "__neg__", "positive": "__pos__", "power": "__pow__",
    "absolute": "__abs__",
}  # fmt: skip
_UNARY_OPERATORS = ("__neg__", "__pos__", "__abs__")
_OPERATOR_GATES: dict[str, Callable[..., Any]] = {}


def define_operators(table: dict[str, Callable[..., Any]]) -> None:
    """Map Python operators on tracked values to gates, e.g. ``{"__add__": gates.add}``.

    A key that is not a dunder (``"T"``) becomes a property computed by the gate.
    """
    _OPERATOR_GATES.update(table)
    for name, fn in table.items():
        if name in _UNARY_OPERATORS:
            setattr(Tracked, name, lambda self, fn=fn: fn(self))
        elif name.startswith("__"):
            setattr(Tracked, name, lambda self, other, fn=fn: fn(self, other))
        else:
            setattr(Tracked, name, property(lambda self, fn=fn: fn(self)))


# ----------------------------------------------------------------------------- gates


class Sample(NamedTuple):
    """One set of inputs for the gate checkers: positional ``args`` and static ``params``."""

    args: tuple[Any, ...]
    params: dict[str, Any] = {}


SampleFn = Callable[[Array, Any], Sequence[Sample]]


@dataclasses.dataclass(frozen=True, eq=False)
class Gate:
    """A differentiable primitive: ``name``, ``forward``, hand-written ``vjp``, checker ``samples``.

    Calling the gate computes ``forward``; if any input is a tracked value, the call is also
    recorded for the backward pass. ``symbol`` is what :func:`fmlp.viz.graph` draws for a call
    (default: ``name``); ``aliases`` are names of operations this gate stands in for (``pow``
    for ``power``), which :class:`NonDifferentiableError` suggests it for.
    """

    name: str
    forward: Callable[..., Array]
    vjp: Callable[..., tuple[Array | None, ...]]
    samples: SampleFn
    symbol: str | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.symbol is None:
            object.__setattr__(self, "symbol", self.name)

    def __call__(self, *args: Any, **params: Any) -> Any:
        return call_gate(self, args, params)

    def __repr__(self) -> str:
        return f"Gate({self.name!r})"


class _Registry(dict[str, Gate]):
    """A dict whose failed lookups raise :class:`~fmlp.errors.UnknownGateError`."""

    def __missing__(self, name: str) -> Gate:
        raise _unknown_gate(name)


def _unknown_gate(name: str) -> UnknownGateError:
    return UnknownGateError(f"No gate named {name!r}; registered gates: {sorted(REGISTRY)}.")


#: Every registered gate by name; ``REGISTRY["nope"]`` raises UnknownGateError.
REGISTRY: dict[str, Gate] = _Registry()


def register(
    name: str,
    forward: Callable[..., Array],
    vjp: Callable[..., tuple[Array | None, ...]],
    samples: SampleFn,
    *,
    symbol: str | None = None,
    aliases: Sequence[str] = (),
    replace: bool = False,
) -> Gate:
    """Create a gate and add it to :data:`REGISTRY` (it is then ``fmlp.gates.<name>``).

    Args:
      name: a Python identifier, unique in the registry.
      forward: ``forward(*inputs, **params) -> out``, written with ``jax.numpy``.
      vjp: ``vjp(g, out, *inputs, **params) -> tuple`` of one cotangent (or ``None``) per input.
      samples: ``samples(key, dtype) -> list[Sample]`` of inputs on which to check the VJP.
      symbol: what :func:`fmlp.viz.graph` draws for a call, e.g. ``"+"`` (default: ``name``).
      aliases: names of operations (JAX or numpy functions, array methods) the gate stands in
        for: an error about one of them on a tracked value suggests this gate.
      replace: allow overwriting an existing gate of the same name.

    Returns:
      The new :class:`Gate`.
    """
    if not name.isidentifier():
        raise ValueError(f"Gate name must be a Python identifier, got {name!r}.")
    if symbol is not None and not (isinstance(symbol, str) and symbol):
        raise ValueError(f"Gate symbol must be a non-empty string, got {symbol!r}.")
    if name in REGISTRY and not replace:
        raise ValueError(
            f"A gate named {name!r} is already registered; pass replace=True to overwrite it."
        )
    gate = Gate(name, forward, vjp, samples, symbol, tuple(aliases))
    REGISTRY[name] = gate
    return gate


def unregister(name: str) -> None:
    """Remove a gate added with :func:`register` (mainly for tests of user-defined gates)."""
    if name not in REGISTRY:
        raise _unknown_gate(name)
    del REGISTRY[name]


def call_gate(gate: Gate, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """Run ``gate`` on ``args``; if any is tracked, record the call on its tape (forward pass)."""
    tapes = {a._tape for a in args if isinstance(a, Tracked)}
    values = tuple(a.value if isinstance(a, Tracked) else a for a in args)
    if not tapes:
        return gate.forward(*values, **params)
    if not all(t.open for t in tapes):
        raise ValueError(
            f"Gate {gate.name!r} received a tracked value that escaped the fmlp.grad/vjp call "
            "that created it; return values out of the differentiated function instead."
        )
    if len(tapes) > 1:
        raise NotImplementedError(
            f"Gate {gate.name!r} received values tracked by two nested fmlp.grad/vjp calls; "
            "higher-order derivatives are not supported by the engine (use jax.grad for those)."
        )
    (tape,) = tapes
    out = tape.track(gate.forward(*values, **params))
    parents = tuple(a._id if isinstance(a, Tracked) else None for a in args)
    tape.records.append(_Record(gate, params, values, parents, out.value, out._id))
    return out


# ----------------------------------------------------------------------------- errors

_LIBRARY_PREFIXES = ("fmlp.engine", "fmlp.gates", "jax", "jaxlib", "numpy", "importlib")
_JAX_INTERNAL_NAMES = {"custom_jvp_call", "custom_vjp_call", "pjit", "jit", "closed_call"}
_JAX_OP_PATTERNS = [
    re.compile(r"argument to <function (\w+) at"),
    re.compile(r"passed to (\w+) at position"),
    re.compile(r"^(\w+) requires ndarray or scalar arguments"),
]


def _user_frame(frames: Sequence[types.FrameType]) -> types.FrameType | None:
    """The innermost frame outside the engine, the gates, JAX and numpy: the user's line."""
    for frame in frames:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(_LIBRARY_PREFIXES):
            return frame
    return None


def _suggestion(candidates: Sequence[str]) -> str:
    aliases = {alias: gate.name for gate in REGISTRY.values() for alias in gate.aliases}
    for name in candidates:
        name = name.lstrip("_").removeprefix("reduce_")
        gate = name if name in REGISTRY else aliases.get(name)
        if gate is not None:
            return f"Use the gate fmlp.gates.{gate} instead."
    return (
        "Write it with gates (fmlp.gates.REGISTRY lists them), or register a gate with its own "
        "VJP via fmlp.gates.register(...)."
    )


def non_differentiable(
    op: str, *names: str, frame: types.FrameType | None = None
) -> NonDifferentiableError:
    """Build the error for ``op`` applied to a tracked value, pointing at the user's line."""
    if frame is None:
        stack = []
        f = sys._getframe(1)
        while f is not None:
            stack.append(f)
            f = f.f_back
        frame = _user_frame(stack)
    where, line = "", ""
    if frame is not None:
        path, lineno = frame.f_code.co_filename, frame.f_lineno
        line = linecache.getline(path, lineno).strip()
        where = f" at {path}:{lineno}" + (f" (`{line}`)" if line else "")
    # The operation's own names; failing those, the functions the user's line calls.
    candidates = names or reversed(re.findall(r"(\w+)\s*\(", line))
    return NonDifferentiableError(
        f"fmlp cannot differentiate {op} applied to a tracked value{where}: only gates have "
        f"backward rules, and a silent zero gradient would be wrong. "
        f"{_suggestion(list(candidates))}"
    )


def _translate(error: Exception) -> NonDifferentiableError | None:
    """Turn JAX's 'not a valid JAX type' error about a Tracked value into a named one."""
    message = str(error)
    if isinstance(error, NonDifferentiableError) or "Tracked" not in message:
        return None
    op = next((m.group(1) for p in _JAX_OP_PATTERNS if (m := p.search(message))), None)
    if op in _JAX_INTERNAL_NAMES:
        op = None
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    frame = _user_frame(list(reversed(frames)))
    return non_differentiable(
        f"the JAX operation {op!r}" if op else "a JAX operation", *([op] if op else []), frame=frame
    )


# ----------------------------------------------------------------------------- public API


def _unwrap(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.value if isinstance(x, Tracked) else x, tree)


def _forward(fun: Callable[..., Any], primals: tuple[Any, ...]) -> tuple[_Tape, list, Any, Any]:
    """Track every floating leaf of ``primals`` and run ``fun`` on a fresh tape (forward pass)."""
    tape = _Tape()
    leaves, treedef = jax.tree.flatten(primals)
    tracked = []
    for leaf in leaves:
        if isinstance(leaf, Tracked):
            raise NotImplementedError(
                "fmlp.grad/vjp was called on a value already tracked by an outer fmlp.grad/vjp; "
                "higher-order derivatives are not supported by the engine (use jax.grad for those)."
            )
        x = jnp.asarray(leaf)
        tracked.append(tape.track(x) if jnp.issubdtype(x.dtype, jnp.floating) else x)
    try:
        out = fun(*jax.tree.unflatten(treedef, tracked))
    except (TypeError, ValueError) as e:
        translated = _translate(e)
        if translated is None:
            raise
        raise translated from None
    finally:
        tape.open = False
    return tape, tracked, treedef, out


def vjp(fun: Callable[..., Any], *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
    """Like :func:`jax.vjp`, computed by the engine from the gates' hand-written VJPs.

    Args:
      fun: function of ``primals`` (pytrees of float arrays/Python floats) written with gates.
      *primals: the point at which to differentiate.
      has_aux: ``fun`` returns ``(output, aux)``; ``aux`` is returned as is, not differentiated.

    Returns:
      ``(out, vjp_fn)`` or ``(out, vjp_fn, aux)``. ``vjp_fn(ct)`` takes a cotangent with the
      structure and shapes of ``out`` and returns a tuple with one cotangent per primal.
    """
    tape, tracked, treedef, out = _forward(fun, primals)
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                f"has_aux=True requires fun to return a pair (output, aux), got {type(out)}."
            )
        out, aux = out
    out_leaves, out_tree = jax.tree.flatten(out)

    def vjp_fn(ct: Any) -> tuple[Any, ...]:
        ct_leaves, ct_tree = jax.tree.flatten(ct)
        if ct_tree != out_tree:
            raise ValueError(
                f"vjp_fn expected a cotangent with the structure of the output {out_tree}, "
                f"got {ct_tree}."
            )
        seeds = []
        for o, c in zip(out_leaves, ct_leaves):
            if jnp.shape(o) != jnp.shape(c):
                raise ValueError(
                    f"vjp_fn: cotangent shape {jnp.shape(c)} does not match output shape "
                    f"{jnp.shape(o)}."
                )
            if isinstance(o, Tracked) and o._tape is tape:
                seeds.append((o._id, jnp.asarray(c, dtype=o.dtype)))
        cts = tape.backward(seeds)
        grads = [
            (cts[t._id] if t._id in cts else jnp.zeros_like(t.value))
            if isinstance(t, Tracked)
            else np.zeros(jnp.shape(t), dtype=jax.dtypes.float0)
            for t in tracked
        ]
        return tuple(jax.tree.unflatten(treedef, grads))

    result = (_unwrap(out), vjp_fn)
    return (*result, _unwrap(aux)) if has_aux else result


def value_and_grad(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Like :func:`jax.value_and_grad`: ``f(*args) -> (value, grads)`` by the engine.

    Args:
      fun: scalar-valued function written with gates (or ``(scalar, aux)`` with ``has_aux``).
      argnums: which positional argument(s) to differentiate; an int or a sequence of ints.
      has_aux: ``fun`` returns ``(value, aux)``; the result is then ``((value, aux), grads)``.

    Returns:
      A function returning the value and the gradient: a pytree shaped like
      ``args[argnums]`` (or a tuple of them when ``argnums`` is a sequence).
    """
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def value_and_grad_fun(*args: Any, **kwargs: Any) -> Any:
        for i in nums:
            if not -len(args) <= i < len(args):
                raise ValueError(
                    f"argnums={argnums} refers to argument {i}, but the function was called "
                    f"with {len(args)} positional arguments."
                )
            for leaf in jax.tree.leaves(args[i]):
                dtype = jnp.result_type(leaf)
                if not jnp.issubdtype(dtype, jnp.floating):
                    raise TypeError(
                        f"fmlp.grad requires real floating-point inputs, but argument {i} has a "
                        f"leaf of dtype {dtype}. Pass integer data such as labels as an argument "
                        f"that argnums does not select."
                    )

        def partial_fun(*diff_args: Any) -> Any:
            full = list(args)
            for i, a in zip(nums, diff_args):
                full[i] = a
            return fun(*full, **kwargs)

        out, vjp_fn, *aux = vjp(partial_fun, *(args[i] for i in nums), has_aux=has_aux)
        if not (isinstance(out, jax.Array | np.ndarray | float) and jnp.shape(out) == ()):
            raise TypeError(
                "fmlp.grad needs a function with a scalar output; got "
                f"{f'shape {jnp.shape(out)}' if hasattr(out, 'shape') else type(out)}. "
                "Reduce it, e.g. with fmlp.gates.mean, or use fmlp.vjp."
            )
        grads = vjp_fn(jnp.ones_like(out))
        grads = grads[0] if isinstance(argnums, int) else grads
        return ((out, aux[0]), grads) if has_aux else (out, grads)

    return value_and_grad_fun


def grad(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Like :func:`jax.grad`: the gradient of a scalar function, by the engine.

    Example (the lecture's circuit f = (x + y) z):

    >>> import fmlp
    >>> f = lambda x, y, z: (x + y) * z
    >>> [float(g) for g in fmlp.grad(f, argnums=(0, 1, 2))(-2.0, 5.0, -4.0)]
    [-4.0, -4.0, 3.0]
    """
    value_and_grad_fun = value_and_grad(fun, argnums, has_aux)

    def grad_fun(*args: Any, **kwargs: Any) -> Any:
        value, grads = value_and_grad_fun(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return grad_fun


# ----------------------------------------------------------------------------- inspection


@dataclasses.dataclass(frozen=True)
class Node:
    """One value of a traced computation: an argument leaf or the output of one gate call.

    ``grad`` is the derivative of the (scalar) output with respect to this value, or None
    where the output does not depend on it or is not a scalar.
    """

    id: int
    gate: str | None  # None for argument leaves
    parents: tuple[int | None, ...]  # tape ids of the gate's inputs; None for constants
    inputs: tuple[Any, ...]  # the gate's input values, constants included
    params: dict[str, Any]
    value: Array
    grad: Array | None
    path: str | None  # for argument leaves: where it sits, e.g. "[0][1]['W']"
    symbol: str | None = None  # the gate's drawing symbol when traced; None for argument leaves


@dataclasses.dataclass(frozen=True)
class Graph:
    """The computation graph :func:`trace` recorded: nodes in forward order and the output."""

    nodes: list[Node]
    output: int | None  # id of the output node; None when the output is a constant
    constants: list[tuple[str, Any]]  # argument leaves that are not differentiated (labels)


def trace(fun: Callable[..., Any], *args: Any) -> Graph:
    """Run ``fun(*args)`` forward and backward, keeping every gate call, value and gradient.

    Every floating leaf of ``args`` becomes an input node. If ``fun`` returns a scalar, the
    backward pass is seeded with ``df/df = 1`` and each node gets its gradient, as in the
    lecture's circuit figures; :func:`fmlp.viz.graph` draws the result.
    """
    tape, tracked, _, out = _forward(fun, args)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(args)[0]]
    output = out._id if isinstance(out, Tracked) and out._tape is tape else None
    scalar = output is not None and jnp.shape(out.value) == ()
    cts = tape.backward([(output, jnp.ones_like(out.value))]) if scalar else {}
    nodes = [
        Node(t._id, None, (), (), {}, t.value, cts.get(t._id), path)
        for t, path in zip(tracked, paths)
        if isinstance(t, Tracked)
    ]
    nodes += [
        Node(
            r.out_id,
            r.gate.name,
            r.parents,
            r.inputs,
            r.params,
            r.out,
            cts.get(r.out_id),
            None,
            r.gate.symbol,
        )
        for r in tape.records
    ]
    constants = [(p, t) for t, p in zip(tracked, paths) if not isinstance(t, Tracked)]
    return Graph(nodes, output, constants)
