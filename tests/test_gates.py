"""The gate registry: every hand-written VJP against jax.vjp and finite differences.

The sweep is parametrised over ``sorted(REGISTRY)`` at collection time, so a newly registered
gate is checked with no edit here. The other tests pin down what the sweep cannot: that the
samples keep covering broadcasting and batch sizes, numerics at extreme logits, the loss gates'
closed-form gradients, error messages, and that a wrong VJP is caught.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fmlp
from fmlp import engine, gates
from fmlp.errors import UnknownGateError
from fmlp.gates import REGISTRY, Sample
from fmlp.testing import FD_TOLERANCE, TOLERANCE, GradientCheckError, check_gate

DTYPES = [jnp.float32, jnp.float64]
DTYPE_IDS = ["float32", "float64"]

BINARY_ELEMENTWISE = ["add", "subtract", "multiply", "divide", "maximum", "minimum"]
UNARY_ELEMENTWISE = [
    "negate",
    "identity",
    "square",
    "exp",
    "log",
    "tanh",
    "sigmoid",
    "relu",
    "leaky_relu",
    "abs",
    "sqrt",
    "gelu",
    "silu",
    "softplus",
    "elu",
]
# Scalar, vector, matrix, both bias-add broadcasts, batch 1 and batch 128.
REQUIRED_BINARY_SHAPES = [
    ((), ()),
    ((3,), (3,)),
    ((4, 3), (4, 3)),
    ((4, 3), (3,)),
    ((4, 3), (1, 3)),
    ((1, 3), (1, 3)),
    ((128, 3), (3,)),
]
REQUIRED_UNARY_SHAPES = [(), (3,), (4, 3), (1, 3), (128, 3)]

# Rows of logits at the edge of float range: huge positive and negative entries, one dominant
# logit, and a row where every logit is hugely negative.
EXTREME_LOGITS = [
    [1e4, -1e4, 0.0, 2.0],
    [0.0, 0.0, 0.0, 1e4],
    [-1e4, -1e4, -1e4, -1e4],
    [1e4, 1e4, -1e4, -1e4],
]
# Row 0: the correct class is 2e4 below the best (worst case); row 1: the huge logit is the
# correct class; row 2: all equal; row 3: a tie of two huge logits, one of them correct.
EXTREME_LABELS = [1, 3, 2, 0]

# What fmlp.viz draws for a gate call, where it is not the gate's name.
SYMBOLS = {
    "add": "+",
    "subtract": "-",
    "multiply": "*",
    "divide": "/",
    "negate": "neg",
    "matmul": "@",
    "transpose": "T",
    "square": "x²",
    "sum": "Σ",
    "sigmoid": "σ",
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
    "softmax_cross_entropy": "CrEnt",
    "squared_error": "SqErr",
    "mean_squared_error": "MSE",
    "power": "**",
    "abs": "|x|",
    "sqrt": "√",
    "maximum": "max",
    "minimum": "min",
    "logsumexp": "LSE",
    "gelu": "GELU",
    "silu": "SiLU",
    "elu": "ELU",
    "concatenate": "concat",
    "index": "[ ]",
    "dropout": "Dropout",
    "layer_norm": "LayerNorm",
    "sigmoid_binary_cross_entropy": "BCE",
    "huber": "Huber",
    "absolute_error": "AbsErr",
}


def _sample_shapes(name: str, dtype=jnp.float64) -> list[tuple[tuple[int, ...], ...]]:
    samples = REGISTRY[name].samples(jax.random.key(0), dtype)
    return [tuple(jnp.shape(a) for a in s.args) for s in samples]


# ----------------------------------------------------------------------------- the sweep


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_check_gate_every_registered_gate(name, dtype):
    # The samples are what check_gate compares on: some, and in the dtype asked for.
    samples = REGISTRY[name].samples(jax.random.key(0), dtype)
    assert len(samples) > 0
    for sample in samples:
        assert isinstance(sample, Sample)
        floats = [a for a in sample.args if jnp.issubdtype(jnp.result_type(a), jnp.floating)]
        assert floats, f"{name}: a sample without any float input checks nothing"
        chex.assert_type(floats, dtype)

    err = check_gate(name, dtype=dtype)
    assert isinstance(err, float)
    assert np.isfinite(err)
    # The worst error covers both comparisons: vs jax.vjp (dtype tolerance) and vs finite
    # differences (always float64, FD_TOLERANCE).
    assert 0.0 <= err <= max(TOLERANCE[jnp.dtype(dtype)], FD_TOLERANCE)


@pytest.mark.parametrize("name", BINARY_ELEMENTWISE)
def test_binary_samples_cover_broadcasting_and_batch_sizes(name):
    shapes = _sample_shapes(name)
    assert all(len(s) == 2 for s in shapes)
    missing = [pair for pair in REQUIRED_BINARY_SHAPES if pair not in shapes]
    assert not missing, f"{name} samples lost the shape pairs {missing}"


@pytest.mark.parametrize("name", UNARY_ELEMENTWISE)
def test_unary_samples_cover_shapes(name):
    shapes = [s[0] for s in _sample_shapes(name) if len(s) == 1]
    missing = [s for s in REQUIRED_UNARY_SHAPES if s not in shapes]
    assert not missing, f"{name} samples lost the shapes {missing}"


def test_loss_samples_cover_every_target_kind_and_batch_size():
    samples = REGISTRY["softmax_cross_entropy"].samples(jax.random.key(0), jnp.float64)
    kinds = set()
    for logits, labels in (s.args for s in samples):
        if jnp.issubdtype(labels.dtype, jnp.integer):
            kind = "labels"
        elif bool(jnp.all((labels == 0) | (labels == 1))):
            kind = "one_hot"
        else:
            kind = "probabilities"
        kinds.add((kind, logits.shape[:-1]))
    expected = {(k, b) for k in ("labels", "one_hot", "probabilities") for b in [(), (1,), (128,)]}
    assert expected <= kinds


def test_row_samples_include_extreme_logits():
    for name in ["softmax", "log_softmax"]:
        samples = REGISTRY[name].samples(jax.random.key(0), jnp.float64)
        assert any(float(jnp.max(jnp.abs(s.args[0]))) >= 1e4 for s in samples), name


# ----------------------------------------------------------------------------- extremes


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_cross_entropy_is_finite_at_extreme_logits(dtype):
    logits = jnp.array(EXTREME_LOGITS, dtype)
    labels = jnp.array(EXTREME_LABELS)

    loss = gates.softmax_cross_entropy(logits, labels)
    chex.assert_shape(loss, (4,))
    chex.assert_type(loss, dtype)
    chex.assert_tree_all_finite(loss)
    assert float(loss[0]) == pytest.approx(2e4, rel=1e-6)
    assert float(loss[1]) == pytest.approx(0.0, abs=1e-6)
    assert float(loss[2]) == pytest.approx(np.log(4.0), rel=1e-5)
    assert float(loss[3]) == pytest.approx(np.log(2.0), rel=1e-5)

    def mean_loss(z):
        return gates.mean(gates.softmax_cross_entropy(z, labels))

    g_engine = fmlp.grad(mean_loss)(logits)
    chex.assert_tree_all_finite(g_engine)
    g_jax = jax.grad(mean_loss)(logits)
    np.testing.assert_allclose(g_engine, g_jax, atol=1e-6)

    ct = jnp.ones((4,), dtype)
    g_logits, g_labels = gates.softmax_cross_entropy.vjp(ct, loss, logits, labels)
    assert g_labels is None
    chex.assert_tree_all_finite(g_logits)
    expected = jax.nn.softmax(logits) - jax.nn.one_hot(labels, 4, dtype=dtype)
    np.testing.assert_allclose(g_logits, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_and_log_softmax_are_finite_at_extreme_logits(name, dtype):
    logits = jnp.array(EXTREME_LOGITS, dtype)
    out = REGISTRY[name](logits)
    chex.assert_tree_all_finite(out)
    if name == "softmax":
        np.testing.assert_allclose(jnp.sum(out, axis=-1), np.ones(4), rtol=1e-6)
        np.testing.assert_allclose(out[1], [0.0, 0.0, 0.0, 1.0], atol=1e-6)
    else:
        # log p may be as low as -2e4, but is finite and <= 0; the dominant class has log p ~ 0.
        assert not bool(jnp.any(out > 0))
        assert float(out[1, 3]) == pytest.approx(0.0, abs=1e-6)
        np.testing.assert_allclose(out[2], np.full(4, -np.log(4.0)), rtol=1e-5)

    def f(z):
        return gates.sum(gates.multiply(REGISTRY[name](z), jnp.full((4, 4), 0.25, dtype)))

    g = fmlp.grad(f)(logits)
    assert not bool(jnp.any(jnp.isnan(g)))
    np.testing.assert_allclose(g, jax.grad(f)(logits), atol=1e-6)


# ----------------------------------------------------------------------------- loss gradients


@pytest.fixture
def logits_and_labels(key):
    k1, k2 = jax.random.split(key)
    logits = 3.0 * jax.random.normal(k1, (6, 5), jnp.float64)
    labels = jax.random.randint(k2, (6,), 0, 5)
    return logits, labels


def test_softmax_cross_entropy_gradient_is_p_minus_t_for_integer_labels(logits_and_labels):
    logits, labels = logits_and_labels
    g = fmlp.grad(lambda z: gates.sum(gates.softmax_cross_entropy(z, labels)))(logits)
    expected = jax.nn.softmax(logits) - jax.nn.one_hot(labels, 5, dtype=jnp.float64)
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-14)


def test_softmax_cross_entropy_gradient_is_p_minus_t_for_one_hot_labels(logits_and_labels):
    logits, labels = logits_and_labels
    one_hot = jax.nn.one_hot(labels, 5, dtype=jnp.float64)
    g = fmlp.grad(lambda z, t: gates.sum(gates.softmax_cross_entropy(z, t)))(logits, one_hot)
    np.testing.assert_allclose(g, jax.nn.softmax(logits) - one_hot, rtol=1e-12, atol=1e-14)
    # One-hot rows and integer labels are the same loss.
    np.testing.assert_allclose(
        gates.softmax_cross_entropy(logits, one_hot),
        gates.softmax_cross_entropy(logits, labels),
        rtol=1e-12,
    )


def test_integer_labels_get_no_cotangent(logits_and_labels):
    logits, labels = logits_and_labels
    out = gates.softmax_cross_entropy(logits, labels)
    ct = jnp.linspace(0.5, 1.5, 6, dtype=jnp.float64)
    assert gates.softmax_cross_entropy.vjp(ct, out, logits, labels)[1] is None

    out_e, vjp_e = fmlp.vjp(gates.softmax_cross_entropy, logits, labels)
    out_j, vjp_j = jax.vjp(gates.softmax_cross_entropy, logits, labels)
    np.testing.assert_allclose(out_e, out_j, rtol=1e-12)
    (d_logits_e, d_labels_e), (d_logits_j, d_labels_j) = vjp_e(ct), vjp_j(ct)
    np.testing.assert_allclose(d_logits_e, d_logits_j, rtol=1e-12, atol=1e-14)
    # Like JAX: an integer primal gets a float0 cotangent of its shape.
    assert d_labels_j.dtype == jax.dtypes.float0
    assert d_labels_e.dtype == jax.dtypes.float0
    chex.assert_shape([d_labels_e, d_labels_j], labels.shape)


def test_probability_targets_get_the_jax_cotangent(key):
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, (5, 4), jnp.float64)
    probs = jax.nn.softmax(2.0 * jax.random.normal(k2, (5, 4), jnp.float64))
    ct = jnp.arange(1.0, 6.0, dtype=jnp.float64)

    _, vjp_e = fmlp.vjp(gates.softmax_cross_entropy, logits, probs)
    _, vjp_j = jax.vjp(gates.softmax_cross_entropy, logits, probs)
    ours, ref = vjp_e(ct), vjp_j(ct)
    assert ours[1] is not None
    chex.assert_shape(ours[1], probs.shape)
    assert not np.allclose(ours[1], 0.0)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours, ref)
    chex.assert_trees_all_close(ours, ref, rtol=1e-12, atol=1e-14)
    # d l / d t = -log p, scaled by the cotangent of each row.
    expected = -ct[:, None] * jax.nn.log_softmax(logits)
    np.testing.assert_allclose(ours[1], expected, rtol=1e-12)


def test_squared_error_is_half_the_summed_square_per_example(key):
    k1, k2 = jax.random.split(key)
    o = jax.random.normal(k1, (7, 3), jnp.float64)
    t = jax.random.normal(k2, (7, 3), jnp.float64)
    e = gates.squared_error(o, t)
    chex.assert_shape(e, (7,))
    np.testing.assert_allclose(e, 0.5 * np.sum((np.asarray(o) - np.asarray(t)) ** 2, axis=-1))

    g_o, g_t = fmlp.grad(lambda o, t: gates.sum(gates.squared_error(o, t)), argnums=(0, 1))(o, t)
    np.testing.assert_allclose(g_o, o - t, rtol=1e-12)
    np.testing.assert_allclose(g_t, t - o, rtol=1e-12)


def test_squared_error_of_a_scalar_and_of_one_vector():
    assert float(gates.squared_error(jnp.float64(3.0), jnp.float64(1.0))) == 2.0
    v = gates.squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0]))
    chex.assert_shape(v, ())
    assert float(v) == 2.5


def test_mean_squared_error_is_the_mean_of_squares(key):
    k1, k2 = jax.random.split(key)
    o = jax.random.normal(k1, (7, 3), jnp.float64)
    t = jax.random.normal(k2, (7, 3), jnp.float64)
    mse = gates.mean_squared_error(o, t)
    chex.assert_shape(mse, ())
    np.testing.assert_allclose(mse, np.mean((np.asarray(o) - np.asarray(t)) ** 2), rtol=1e-12)
    g = fmlp.grad(gates.mean_squared_error)(o, t)
    np.testing.assert_allclose(g, 2.0 * (o - t) / 21.0, rtol=1e-12)


# ----------------------------------------------------------------------------- errors


def test_softmax_cross_entropy_rejects_integer_labels_of_the_wrong_shape():
    logits = jnp.zeros((4, 5))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(4,\).*got \(3,\)"):
        gates.softmax_cross_entropy(logits, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(4,\).*got \(4, 1\)"):
        gates.softmax_cross_entropy(logits, jnp.zeros((4, 1), jnp.int32))


def test_softmax_cross_entropy_rejects_probability_rows_of_the_wrong_shape():
    logits = jnp.zeros((4, 5))
    with pytest.raises(ValueError, match=r"probability targets.*\(4, 5\).*got \(4, 3\)"):
        gates.softmax_cross_entropy(logits, jnp.full((4, 3), 1.0 / 3.0))


def test_softmax_cross_entropy_shape_error_is_raised_under_the_engine():
    def f(z):
        return gates.mean(gates.softmax_cross_entropy(z, jnp.array([0, 1, 2])))

    with pytest.raises(ValueError, match=r"integer labels must have shape \(4,\)"):
        fmlp.grad(f)(jnp.zeros((4, 5)))


def test_matmul_rejects_mismatched_inner_dimensions():
    x, w = jnp.ones((4, 3)), jnp.ones((2, 5))
    with pytest.raises(ValueError, match=r"matmul: .*x \(4, 3\) and W \(2, 5\)"):
        gates.matmul(x, w)
    with pytest.raises(ValueError, match=r"x \(4, 3\) and W \(2, 5\)"):
        fmlp.grad(lambda w: gates.sum(gates.matmul(x, w)))(w)
    with pytest.raises(ValueError, match=r"x \(4, 3\) and W \(2,\)"):
        gates.matmul(x, jnp.ones(2))


def test_register_rejects_a_duplicate_name():
    before = REGISTRY["tanh"]
    with pytest.raises(ValueError, match=r"'tanh' is already registered.*replace=True"):
        gates.register("tanh", jnp.tanh, lambda g, out, x: (g,), gates.tanh.samples)
    assert REGISTRY["tanh"] is before is gates.tanh


@pytest.mark.parametrize("name", ["my-gate", "1tanh", "soft plus", ""])
def test_register_rejects_a_name_that_is_not_an_identifier(name):
    with pytest.raises(ValueError, match="Python identifier"):
        gates.register(name, jnp.tanh, lambda g, out, x: (g,), gates.tanh.samples)
    assert name not in REGISTRY


@pytest.mark.parametrize(
    "lookup",
    [
        gates.unregister,
        lambda name: REGISTRY[name],
        check_gate,
        fmlp.testing.compare_gate,
        lambda name: fmlp.testing.check_all_gates([name, "tanh"]),
    ],
    ids=["unregister", "REGISTRY[name]", "check_gate", "compare_gate", "check_all_gates"],
)
def test_an_unknown_gate_name_raises_unknown_gate_error(lookup):
    with pytest.raises(UnknownGateError, match=r"No gate named .*'no_such_gate'") as info:
        lookup("no_such_gate")
    assert isinstance(info.value, KeyError)  # what these raised before UnknownGateError
    assert "registered gates: [" in str(info.value) and "'tanh'" in str(info.value)
    assert "no_such_gate" not in REGISTRY


def test_an_unknown_gate_is_no_attribute_of_the_module():
    assert not hasattr(gates, "no_such_gate")
    with pytest.raises(AttributeError, match="no attribute or gate 'no_such_gate'"):
        gates.no_such_gate  # noqa: B018


def test_the_engine_owns_the_gate_and_gates_re_exports_it():
    assert gates.Gate is engine.Gate and gates.Sample is engine.Sample
    assert gates.REGISTRY is engine.REGISTRY and gates.SampleFn is engine.SampleFn
    assert gates.register is engine.register and gates.unregister is engine.unregister
    assert isinstance(REGISTRY, dict)


def test_each_gate_carries_its_drawing_symbol():
    drawn = {name: gate.symbol for name, gate in REGISTRY.items() if gate.symbol != name}
    assert drawn == SYMBOLS
    assert gates.tanh.symbol == "tanh" and gates.softmax.symbol == "softmax"


@pytest.mark.parametrize("symbol", ["", 3, b"+"], ids=["empty", "int", "bytes"])
def test_register_rejects_a_symbol_that_is_not_a_non_empty_string(symbol):
    with pytest.raises(ValueError, match=r"symbol must be a non-empty string, got "):
        gates.register(
            "tmp_bad_symbol", jnp.tanh, lambda g, out, x: (g,), gates.tanh.samples, symbol=symbol
        )
    assert "tmp_bad_symbol" not in REGISTRY


# ----------------------------------------------------------------------------- user gates


@pytest.fixture
def temporary_gates():
    """``register`` that removes its gates again, so they never leak into other tests."""
    names = []

    def register(name, *args, **kwargs):
        gate = gates.register(name, *args, **kwargs)
        names.append(name)
        return gate

    yield register
    for name in names:
        if name in REGISTRY:
            gates.unregister(name)
        assert name not in REGISTRY
        assert not hasattr(gates, name)


def _softplus_samples(key, dtype):
    shapes = [(), (3,), (4, 3), (1, 3), (128, 3)]
    keys = jax.random.split(key, len(shapes))
    return [Sample((3.0 * jax.random.normal(k, s, dtype),)) for k, s in zip(keys, shapes)]


def test_register_and_unregister_a_gate(temporary_gates):
    gate = temporary_gates(
        "tmp_double", lambda x: 2.0 * x, lambda g, out, x: (2.0 * g,), _softplus_samples
    )
    assert isinstance(gate, gates.Gate)
    assert REGISTRY["tmp_double"] is gate is gates.tmp_double
    assert "tmp_double" in dir(gates)
    assert repr(gate) == "Gate('tmp_double')"
    assert gate.symbol == "tmp_double"  # the default: its name
    replaced = gates.register(
        "tmp_double",
        lambda x: 3.0 * x,
        lambda g, out, x: (3.0 * g,),
        _softplus_samples,
        symbol="3x",
        replace=True,
    )
    assert REGISTRY["tmp_double"] is replaced is gates.tmp_double
    assert replaced.symbol == "3x"
    assert float(gates.tmp_double(jnp.float64(2.0))) == 6.0
    gates.unregister("tmp_double")
    assert "tmp_double" not in REGISTRY
    assert not hasattr(gates, "tmp_double")
    assert "tmp_double" not in dir(gates)


def test_register_by_keyword_as_the_readme_shows(temporary_gates):
    gate = temporary_gates(
        "tmp_softplus",
        forward=lambda x: jnp.logaddexp(x, 0.0),
        vjp=lambda g, out, x: (g * jax.nn.sigmoid(x),),
        samples=_softplus_samples,
        symbol="softplus",
    )
    assert gates.tmp_softplus is gate
    assert (gate.name, gate.symbol) == ("tmp_softplus", "softplus")
    assert float(gate(jnp.float64(0.0))) == pytest.approx(np.log(2.0))


@pytest.mark.parametrize(
    "name, vjp",
    [
        ("bad_tanh", lambda g, out, x: (g * (1.0 + out * out),)),  # + instead of -
        ("bad_tanh_sign", lambda g, out, x: (-g * (1.0 - out * out),)),  # sign error
    ],
)
def test_check_gate_catches_a_wrong_vjp(temporary_gates, name, vjp):
    gate = temporary_gates(name, jnp.tanh, vjp, gates.tanh.samples)
    with pytest.raises(GradientCheckError, match=f"VJP of gate '{name}' disagrees") as info:
        check_gate(name)
    message = str(info.value)
    assert "vs jax.vjp" in message
    assert "vs finite differences" in message
    assert "(128, 3)" in message  # names the failing sample's shapes
    # The same wrong rule makes the engine disagree with jax.grad.
    with pytest.raises(GradientCheckError, match=r"fmlp\.grad disagrees with jax\.grad"):
        fmlp.testing.check_grad(lambda x: gates.sum(gate(x)), jnp.linspace(-1.0, 1.0, 5))


def test_check_gate_catches_a_wrong_number_of_cotangents(temporary_gates):
    temporary_gates("bad_arity", jnp.tanh, lambda g, out, x: (g, g), gates.tanh.samples)
    with pytest.raises(GradientCheckError, match=r"'bad_arity' returned 2 cotangents for 1"):
        check_gate("bad_arity")
    with pytest.raises(TypeError, match=r"'bad_arity' returned 2 cotangents for 1 inputs"):
        fmlp.grad(lambda x: gates.sum(gates.bad_arity(x)))(jnp.ones(3))


def test_a_correct_user_gate_passes_and_composes(temporary_gates, key):
    softplus = temporary_gates(
        "user_softplus",
        lambda x: jnp.logaddexp(x, 0.0),
        lambda g, out, x: (g * jax.nn.sigmoid(x),),  # d softplus = sigmoid
        _softplus_samples,
    )
    err = check_gate("user_softplus")
    assert 0.0 <= err <= FD_TOLERANCE
    assert gates.user_softplus is softplus

    kx, kw, kv = jax.random.split(key, 3)
    x = jax.random.normal(kx, (8, 4), jnp.float64)
    w = jax.random.normal(kw, (4, 3), jnp.float64)
    v = jax.random.normal(kv, (3,), jnp.float64)

    def f(w, v):
        return gates.mean(gates.tanh(gates.matmul(softplus(gates.matmul(x, w)), v)))

    assert fmlp.testing.check_grad(f, w, v, argnums=(0, 1)) < 1e-9
    ours = fmlp.grad(f, argnums=(0, 1))(w, v)
    ref = jax.grad(f, argnums=(0, 1))(w, v)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours, ref)
    chex.assert_trees_all_close(ours, ref, rtol=1e-10, atol=1e-14)


def test_exp_poisson_deviance_is_half_the_poisson_deviance_of_the_rates():
    # scikit-learn's poisson loss of rates mu = exp(s), per example: sum_j t log(t / mu) - t + mu,
    # with 0 log 0 = 0 for zero counts.
    s = jnp.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]], jnp.float64)
    t = jnp.array([[0.0, 1.0, 4.0], [2.0, 0.0, 1.0]], jnp.float64)
    mu = np.exp(np.asarray(s))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(t > 0, np.asarray(t) * np.log(np.asarray(t) / mu), 0.0) - t + mu
    np.testing.assert_allclose(gates.exp_poisson_deviance(s, t), terms.sum(axis=-1), rtol=1e-12)
    grad = jax.grad(lambda z: jnp.sum(gates.exp_poisson_deviance(z, t)))(s)
    np.testing.assert_allclose(fmlp.grad(lambda z: gates.sum(gates.exp_poisson_deviance(z, t)))(s),
                               grad, rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(grad, mu - t, rtol=1e-12)  # the canonical link: exp(s) - t


# ----------------------------------------------------------------------------- the building blocks


@pytest.mark.parametrize("name", ["maximum", "minimum", "clip"])
def test_the_reference_samples_include_ties(name):
    # Equal values (and clip's bounds) are checked against jax.vjp and finite differences.
    def tied(sample):
        if name == "clip":
            x, bounds = sample.args[0], sample.params
            return any(bool(jnp.any(x == b)) for b in bounds.values())
        x, y = jnp.broadcast_arrays(*sample.args)
        return bool(jnp.any(x == y))

    assert any(tied(s) for s in REGISTRY[name].samples(jax.random.key(0), jnp.float64))


# gate, input at the tie, params, the derivative the docstring states
TIES = [
    ("relu", [0.0], {}, [0.0]),
    ("abs", [0.0], {}, [1.0]),
    ("leaky_relu", [0.0], {"negative_slope": 0.2}, [0.2]),
    ("elu", [0.0], {"alpha": 0.5}, [0.5]),
    ("clip", [-1.0, 1.0], {"min": -1.0, "max": 1.0}, [0.5, 0.5]),
]


@pytest.mark.parametrize("name, x, params, expected", TIES, ids=[t[0] for t in TIES])
def test_tie_conventions_agree_with_jax_vjp(name, x, params, expected):
    gate = REGISTRY[name]
    x = jnp.array(x, jnp.float64)
    ct = jnp.ones_like(x)
    (ours,) = gate.vjp(ct, gate.forward(x, **params), x, **params)
    _, pullback = jax.vjp(lambda x: gate.forward(x, **params), x)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(pullback(ct)[0], expected)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_equal_values_share_the_cotangent(name):
    x = jnp.array([1.0, 2.0, 3.0], jnp.float64)
    y = jnp.array([1.0, 5.0, -3.0], jnp.float64)
    ours = fmlp.grad(lambda x, y: gates.sum(REGISTRY[name](x, y)), argnums=(0, 1))(x, y)
    ref = jax.grad(lambda x, y: jnp.sum(REGISTRY[name](x, y)), argnums=(0, 1))(x, y)
    chex.assert_trees_all_equal(ours, ref)
    assert float(ours[0][0]) == float(ours[1][0]) == 0.5


def test_power_with_integer_exponents_is_exact_for_negative_bases():
    x = jnp.array([-2.0, -0.5, 3.0], jnp.float64)
    np.testing.assert_array_equal(gates.power(x, 3), np.asarray(x) ** 3)
    g = fmlp.grad(lambda x: gates.sum(x**3))(x)
    np.testing.assert_allclose(g, 3.0 * np.asarray(x) ** 2, rtol=1e-14)
    # x^0 = 1 has derivative 0, also at x = 0 (not 0 * 0^-1 = nan).
    np.testing.assert_array_equal(fmlp.grad(lambda x: gates.sum(x**0))(jnp.zeros(2)), [0.0, 0.0])


def test_power_with_a_tracked_exponent_differentiates_both():
    x = jnp.array([0.5, 2.0, 3.0], jnp.float64)
    y = jnp.array([1.5, -1.0, 2.0], jnp.float64)
    gx, gy = fmlp.grad(lambda x, y: gates.sum(x**y), argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gx, y * x ** (y - 1.0), rtol=1e-13)
    np.testing.assert_allclose(gy, x**y * np.log(x), rtol=1e-13)
    np.testing.assert_allclose(fmlp.grad(lambda y: gates.sum(2.0**y))(y), 2.0**y * np.log(2.0))


@pytest.mark.parametrize("approximate", [False, True], ids=["exact", "tanh"])
def test_gelu_is_jax_gelu_in_both_forms(approximate):
    x = jnp.linspace(-4.0, 4.0, 17, dtype=jnp.float64)
    out = gates.gelu(x, approximate=approximate)
    np.testing.assert_allclose(out, jax.nn.gelu(x, approximate=approximate), rtol=1e-12)
    ours = fmlp.grad(lambda x: gates.sum(gates.gelu(x, approximate=approximate)))(x)
    ref = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=approximate)))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    assert not np.allclose(out, gates.gelu(x, approximate=not approximate))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sigmoid_binary_cross_entropy_is_finite_at_extreme_logits(dtype):
    logits = jnp.array([[1e4, -1e4, 1e4, -1e4, 0.0]], dtype)
    targets = jnp.array([[1, 0, 0, 1, 1]], jnp.int32)
    loss = gates.sigmoid_binary_cross_entropy(logits, targets)
    chex.assert_shape(loss, (1,))
    chex.assert_type(loss, dtype)
    # Right with certainty costs 0, wrong with certainty costs |z| each; z = 0 costs log 2.
    assert float(loss[0]) == pytest.approx(2e4 + np.log(2.0), rel=1e-6)
    g = fmlp.grad(lambda z: gates.sum(gates.sigmoid_binary_cross_entropy(z, targets)))(logits)
    np.testing.assert_allclose(g, [[0.0, 0.0, 1.0, -1.0, -0.5]], atol=1e-6)
    # Probability targets: the same loss as the integer ones where they agree.
    probs = targets.astype(dtype)
    np.testing.assert_allclose(gates.sigmoid_binary_cross_entropy(logits, probs), loss, rtol=1e-6)


def test_sigmoid_binary_cross_entropy_gradients_in_closed_form(key):
    k1, k2 = jax.random.split(key)
    z = 3.0 * jax.random.normal(k1, (6, 3), jnp.float64)
    t = jax.random.uniform(k2, (6, 3), jnp.float64)
    loss = gates.sigmoid_binary_cross_entropy(z, t)
    expected = -np.sum(t * jax.nn.log_sigmoid(z) + (1 - t) * jax.nn.log_sigmoid(-z), axis=-1)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    f = lambda z, t: gates.sum(gates.sigmoid_binary_cross_entropy(z, t))
    gz, gt = fmlp.grad(f, argnums=(0, 1))(z, t)
    np.testing.assert_allclose(gz, jax.nn.sigmoid(z) - t, rtol=1e-12)
    np.testing.assert_allclose(gt, -z, rtol=1e-12)


def test_sigmoid_binary_cross_entropy_rejects_targets_of_another_shape():
    with pytest.raises(
        ValueError, match=r"targets must have the logits' shape \(4, 2\), got \(4,\)"
    ):
        gates.sigmoid_binary_cross_entropy(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32))


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    o = jnp.array([[0.5, 3.0, -2.0]], jnp.float64)
    t = jnp.zeros((1, 3), jnp.float64)
    np.testing.assert_allclose(gates.huber(o, t), [0.125 + 2.5 + 1.5], rtol=1e-14)
    np.testing.assert_allclose(gates.huber(o, t, delta=2.0), [0.125 + 4.0 + 2.0], rtol=1e-14)
    g = fmlp.grad(lambda o: gates.sum(gates.huber(o, t)))(o)
    np.testing.assert_array_equal(g, [[0.5, 1.0, -1.0]])


def test_absolute_error_is_the_summed_absolute_difference():
    o = jnp.array([[0.5, 3.0, -2.0], [1.0, 1.0, 1.0]], jnp.float64)
    t = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 2.0]], jnp.float64)
    np.testing.assert_allclose(gates.absolute_error(o, t), [4.5, 2.0], rtol=1e-14)
    g_o, g_t = fmlp.grad(lambda o, t: gates.sum(gates.absolute_error(o, t)), argnums=(0, 1))(o, t)
    np.testing.assert_array_equal(g_o, [[1.0, 1.0, -1.0], [1.0, 1.0, -1.0]])  # +1 where o = t
    np.testing.assert_array_equal(g_t, -g_o)


def test_dropout_backward_goes_through_the_forward_mask(key):
    x = jnp.linspace(1.0, 2.0, 1000, dtype=jnp.float64)
    raw = jax.random.key_data(key)
    out = gates.dropout(x, raw, rate=0.25)
    kept = np.asarray(out) != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(np.asarray(out)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-14)
    g = fmlp.grad(lambda x: gates.sum(gates.dropout(x, raw, rate=0.25)))(x)
    np.testing.assert_array_equal(np.asarray(g) != 0, kept)
    np.testing.assert_allclose(np.asarray(g)[kept], 1.0 / 0.75, rtol=1e-14)
    # The same key, the same mask (typed or raw); another key, another mask.
    np.testing.assert_array_equal(gates.dropout(x, key, rate=0.25), out)
    other = gates.dropout(x, jax.random.fold_in(raw, 1), rate=0.25)
    assert not np.array_equal(np.asarray(other) != 0, kept)
    np.testing.assert_array_equal(gates.dropout(x, raw, rate=0.0), x)


def test_dropout_takes_a_traced_rate_as_it_takes_the_number(key):
    # A sweep's members each have their rate, traced: the same masks and cotangents.
    x = jnp.linspace(1.0, 2.0, 1000, dtype=jnp.float64)
    raw = jax.random.key_data(key)
    summed = lambda x, rate: gates.sum(gates.dropout(x, raw, rate=rate))
    rates = [0.25, 0.5]
    out = jax.jit(jax.vmap(lambda r: gates.dropout(x, raw, rate=r)))(jnp.array(rates))
    grads = jax.jit(jax.vmap(lambda r: fmlp.grad(summed)(x, r)))(jnp.array(rates))
    for rate, traced_out, traced_grad in zip(rates, out, grads):
        np.testing.assert_array_equal(traced_out, gates.dropout(x, raw, rate=rate))
        np.testing.assert_array_equal(traced_grad, fmlp.grad(summed)(x, rate))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rejects_a_rate_outside_0_1(rate):
    with pytest.raises(ValueError, match=r"dropout: rate must be in \[0, 1\)"):
        gates.dropout(jnp.ones(3), jax.random.key(0), rate=rate)


def test_layer_norm_standardizes_each_row_then_scales_and_shifts(key):
    x = 5.0 + 3.0 * jax.random.normal(key, (8, 6), jnp.float64)
    ones, zeros = jnp.ones(6, jnp.float64), jnp.zeros(6, jnp.float64)
    y = gates.layer_norm(x, ones, zeros)
    np.testing.assert_allclose(jnp.mean(y, axis=-1), np.zeros(8), atol=1e-12)
    np.testing.assert_allclose(jnp.var(y, axis=-1), np.ones(8), rtol=1e-5)  # eps = 1e-5
    scale, offset = jnp.arange(1.0, 7.0), jnp.full(6, -2.0)
    np.testing.assert_allclose(
        gates.layer_norm(x, scale, offset), y * scale[None] - 2.0, rtol=1e-12
    )
    f = lambda x, s, b: gates.sum(gates.tanh(gates.layer_norm(x, s, b)))
    assert fmlp.testing.check_grad(f, x, scale, offset, argnums=(0, 1, 2)) < 1e-10


def test_indexing_scatters_the_cotangent_back_and_adds_repeats():
    x = jnp.arange(12.0, dtype=jnp.float64).reshape(4, 3)
    g = fmlp.grad(lambda x: gates.sum(gates.index(x, at=np.array([0, 0, 3]))))(x)
    np.testing.assert_array_equal(g, [[2.0] * 3, [0.0] * 3, [0.0] * 3, [1.0] * 3])
    g = fmlp.grad(lambda x: gates.sum(x[:, :2]) + 10.0 * x[1, 2])(x)
    np.testing.assert_array_equal(g, [[1, 1, 0], [1, 1, 10], [1, 1, 0], [1, 1, 0]])


def test_concatenate_and_reshape_hand_each_input_its_part():
    a, b = jnp.ones((2, 3), jnp.float64), jnp.full((2, 1), 2.0, jnp.float64)
    weights = jnp.arange(8.0, dtype=jnp.float64).reshape(2, 4)
    f = lambda a, b: gates.sum(gates.multiply(gates.concatenate(a, b, axis=1), weights))
    ga, gb = fmlp.grad(f, argnums=(0, 1))(a, b)
    np.testing.assert_array_equal(ga, weights[:, :3])
    np.testing.assert_array_equal(gb, weights[:, 3:])
    flat = lambda a: gates.sum(gates.multiply(gates.reshape(a, shape=(6,)), jnp.arange(6.0)))
    np.testing.assert_array_equal(fmlp.grad(flat)(a), np.arange(6.0).reshape(2, 3))
