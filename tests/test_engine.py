"""The reverse-mode engine: fmlp.grad / value_and_grad / vjp against jax.grad as the oracle.

The gradient tests in the ``chex.TestCase`` classes run twice through ``chex.variants``:
with the engine's function under ``jax.jit`` and called eagerly.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import fmlp
from fmlp import gates, nn
from fmlp.engine import NonDifferentiableError, Tracked, unbroadcast
from fmlp.testing import check_grad

SIZES = [[5, 3], [5, 4, 3], [5, 4, 4, 3], [5, 4, 4, 4, 3]]
HEADS = ["softmax_labels", "softmax_one_hot", "identity"]
BATCH = 6
MASK = jnp.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])


def assert_trees_close(ours, ref, rtol=1e-10, atol=1e-12):
    """Same structure, leaf shapes and dtypes, close values, and no tracked value leaked out."""
    assert not any(isinstance(a, Tracked) for a in jax.tree.leaves(ours))
    chex.assert_trees_all_equal_shapes_and_dtypes(ours, ref)
    chex.assert_trees_all_close(ours, ref, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- the lecture circuit


def circuit(x, y, z):
    """The lecture's f(x, y, z) = (x + y) z, returning the intermediate q = x + y as aux."""
    q = x + y
    return q * z, q


class LectureCircuitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("python_floats", False), ("arrays", True))
    def test_lecture_circuit(self, as_array):
        args = (-2.0, 5.0, -4.0)
        if as_array:
            args = tuple(jnp.array(a) for a in args)
        f = lambda x, y, z: circuit(x, y, z)[0]

        with_aux = self.variant(fmlp.value_and_grad(circuit, argnums=(0, 1, 2), has_aux=True))
        (value, q), grads = with_aux(*args)
        assert float(q) == 3.0
        assert not isinstance(q, Tracked)
        assert float(value) == -12.0
        assert [float(g) for g in grads] == [-4.0, -4.0, 3.0]

        grads = self.variant(fmlp.grad(f, argnums=(0, 1, 2)))(*args)
        assert [float(g) for g in grads] == [-4.0, -4.0, 3.0]
        value, grads = self.variant(fmlp.value_and_grad(f, argnums=(0, 1, 2)))(*args)
        assert float(value) == -12.0
        assert [float(g) for g in grads] == [-4.0, -4.0, 3.0]
        # One argument at a time: dz = q = 3.
        assert float(self.variant(fmlp.grad(f, argnums=2))(*args)) == 3.0
        assert [float(g) for g in jax.grad(f, argnums=(0, 1, 2))(*args)] == [-4.0, -4.0, 3.0]

    @chex.variants(with_jit=True, without_jit=True)
    def test_lecture_circuit_elementwise_on_vectors(self):
        x, y, z = jnp.array([-2.0, 1.0]), jnp.array([5.0, 1.0]), jnp.array([-4.0, 0.5])
        f = lambda x, y, z: gates.sum(circuit(x, y, z)[0])
        value, (gx, gy, gz) = self.variant(fmlp.value_and_grad(f, argnums=(0, 1, 2)))(x, y, z)
        assert float(value) == -12.0 + 1.0
        np.testing.assert_array_equal(gx, z)
        np.testing.assert_array_equal(gy, z)
        np.testing.assert_array_equal(gz, x + y)


# ----------------------------------------------------------------------------- whole MLPs


def _problem(key, sizes, head, dtype=jnp.float64):
    kp, kx, ky = jax.random.split(key, 3)
    params = nn.init(kp, sizes, dtype=dtype)
    x = jax.random.normal(kx, (BATCH, sizes[0]), dtype)
    n_out = sizes[-1]
    if head == "softmax_labels":
        y = jax.random.randint(ky, (BATCH,), 0, n_out)
    elif head == "softmax_one_hot":
        y = jax.nn.one_hot(jax.random.randint(ky, (BATCH,), 0, n_out), n_out, dtype=dtype)
    else:
        y = jax.random.normal(ky, (BATCH, n_out), dtype)
    output = "identity" if head == "identity" else "softmax"
    return params, x, y, output


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("activation", sorted(nn.ACTIVATIONS))
def test_check_grad_passes_for_every_activation_and_head(key, activation, head, masked):
    params, x, y, output = _problem(key, [5, 4, 3], head)
    mask = MASK if masked else None
    loss = lambda p: nn.loss(p, x, y, activation=activation, output=output, mask=mask)
    assert check_grad(loss, params) < 1e-9


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"depth{len(s) - 1}")
def test_mlp_gradient_matches_jax_at_every_depth(key, sizes, head):
    params, x, y, output = _problem(key, sizes, head)

    def loss(p, x):
        return nn.loss(p, x, y, activation="tanh", output=output, mask=MASK)

    # Both the parameters and the inputs; check_grad runs the engine under jax.jit.
    assert check_grad(loss, params, x, argnums=(0, 1)) < 1e-9
    assert len(fmlp.grad(loss)(params, x)) == len(sizes) - 1


class MLPGradientTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.key = jax.random.key(0)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(activation=sorted(nn.ACTIVATIONS), head=HEADS, masked=[False, True])
    def test_mlp_gradient_matches_jax_for_every_activation_and_head(self, activation, head, masked):
        params, x, y, output = _problem(self.key, [5, 4, 3], head)
        mask = MASK if masked else None

        def loss(p):
            return nn.loss(p, x, y, activation=activation, output=output, mask=mask)

        value, grads = self.variant(fmlp.value_and_grad(loss))(params)
        ref_value, ref_grads = jax.value_and_grad(loss)(params)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        assert_trees_close(grads, ref_grads)
        assert float(jnp.linalg.norm(grads[0]["W"])) > 0.0

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*HEADS)
    def test_mlp_gradient_with_the_data_as_arguments(self, head):
        params, x, y, output = _problem(self.key, [5, 4, 4, 3], head)

        def loss(p, x, y):
            return nn.loss(p, x, y, activation="relu", output=output)

        value, grads = self.variant(fmlp.value_and_grad(loss))(params, x, y)
        ref_value, ref_grads = jax.value_and_grad(loss)(params, x, y)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        assert_trees_close(grads, ref_grads)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mlp_gradient_in_float32(self):
        params, x, y, output = _problem(self.key, [5, 4, 3], "softmax_labels", dtype=jnp.float32)
        loss = lambda p: nn.loss(p, x, y, activation="tanh", output=output)
        grads, ref = self.variant(lambda p: (fmlp.grad(loss)(p), jax.grad(loss)(p)))(params)
        chex.assert_type(jax.tree.leaves(grads), jnp.float32)
        assert_trees_close(grads, ref, rtol=2e-4, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*HEADS)
    def test_per_example_gradients_under_vmap(self, head):
        params, x, y, output = _problem(self.key, [5, 4, 3], head)

        def single_loss(p, xi, yi):
            return nn.loss(p, xi, yi, activation="sigmoid", output=output)

        per_example = jax.vmap(fmlp.grad(single_loss), in_axes=(None, 0, 0))
        ours = self.variant(per_example)(params, x, y)
        ref = jax.vmap(jax.grad(single_loss), in_axes=(None, 0, 0))(params, x, y)
        chex.assert_shape(ours[0]["W"], (BATCH, 5, 4))
        assert_trees_close(ours, ref)
        # The mean of the per-example gradients is the batch gradient.
        batch_loss = lambda p: nn.loss(p, x, y, activation="sigmoid", output=output)
        batch = self.variant(fmlp.grad(batch_loss))(params)
        assert_trees_close(jax.tree.map(lambda g: jnp.mean(g, axis=0), ours), batch)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sgd_inside_lax_scan(self):
        params, x, y, output = _problem(self.key, [5, 4, 3], "softmax_labels")
        xs = jnp.stack([x, x[::-1], 0.5 * x, -x])
        ys = jnp.stack([y, y[::-1], y, y])

        def loss(p, xb, yb):
            return nn.loss(p, xb, yb, activation="tanh", output=output)

        def train(grad_fn):
            def step(p, batch):
                g = grad_fn(loss)(p, *batch)
                return jax.tree.map(lambda a, b: a - 0.5 * b, p, g), loss(p, *batch)

            return self.variant(lambda p: jax.lax.scan(step, p, (xs, ys)))(params)

        (ours, our_losses), (ref, ref_losses) = train(fmlp.grad), train(jax.grad)
        assert_trees_close(ours, ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(our_losses, ref_losses, rtol=1e-10)
        assert not np.allclose(ours[0]["W"], params[0]["W"])  # the steps did move the parameters


# ----------------------------------------------------------------------------- fan-out, pytrees


class FanOutAndPytreeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_a_value_used_twice_gets_the_summed_gradient(self):
        w = jnp.array([1.5, -2.0, 0.5])
        grad = lambda f: self.variant(fmlp.grad(f))(w)
        np.testing.assert_allclose(grad(lambda w: gates.sum(w * w)), 2.0 * w)
        np.testing.assert_allclose(grad(lambda w: gates.sum(w + w + w)), np.full(3, 3.0))
        # The same tracked value as both inputs of one gate.
        np.testing.assert_allclose(grad(lambda w: gates.sum(gates.multiply(w, w))), 2.0 * w)

    @chex.variants(with_jit=True, without_jit=True)
    def test_a_weight_matrix_reused_through_a_nonlinearity(self):
        kx, kw = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (4, 3), jnp.float64)
        w = jax.random.normal(kw, (3, 3), jnp.float64)
        f = lambda w: gates.sum(gates.matmul(gates.tanh(gates.matmul(x, w)), w.T))
        assert check_grad(f, w) < 1e-9
        np.testing.assert_allclose(self.variant(fmlp.grad(f))(w), jax.grad(f)(w), rtol=1e-10)

    @chex.variants(with_jit=True, without_jit=True)
    def test_has_aux_under_vjp(self):
        @self.variant
        def pullback(w):
            _, vjp_fn, aux = fmlp.vjp(lambda w: (gates.tanh(w), gates.exp(w)), w, has_aux=True)
            return aux, vjp_fn(jnp.ones(2))[0]

        aux, ct = pullback(jnp.ones(2))
        assert not isinstance(aux, Tracked)
        np.testing.assert_allclose(aux, np.exp(np.ones(2)))
        np.testing.assert_allclose(ct, 1.0 - np.tanh(np.ones(2)) ** 2)

    @chex.variants(with_jit=True, without_jit=True)
    def test_argnums_order_and_int_argnums(self):
        a, b, c = jnp.array([1.0, 2.0]), jnp.array([[3.0]]), jnp.array(4.0)
        f = lambda a, b, c: gates.sum(a) * gates.sum(b) + gates.sum(b) * c * 2.0

        ga = self.variant(fmlp.grad(f))(a, b, c)  # default argnums=0: a single array, not a tuple
        assert isinstance(ga, jax.Array)
        np.testing.assert_allclose(ga, [3.0, 3.0])

        gc, ga2 = self.variant(fmlp.grad(f, argnums=(2, 0)))(a, b, c)
        chex.assert_shape(gc, ())
        chex.assert_shape(ga2, (2,))
        np.testing.assert_allclose(gc, 6.0)
        np.testing.assert_allclose(ga2, ga)

        grads = self.variant(fmlp.grad(f, argnums=(0, 1, 2)))(a, b, c)
        assert isinstance(grads, tuple) and len(grads) == 3
        assert_trees_close(grads, jax.grad(f, argnums=(0, 1, 2))(a, b, c))

        (gb,) = self.variant(fmlp.grad(f, argnums=(1,)))(a, b, c)  # a 1-tuple stays a tuple
        np.testing.assert_allclose(gb, [[3.0 + 8.0]])
        np.testing.assert_allclose(self.variant(fmlp.grad(f, argnums=-1))(a, b, c), 6.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pytrees_of_mixed_containers_with_python_float_leaves(self):
        params = {
            "layers": [
                (jnp.array([[1.0, -1.0], [0.5, 2.0]]), 0.25),
                (jnp.array([0.3, -0.7]), 2.0),
            ],
            "scale": 1.5,
        }
        x = jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 1.0]])

        def f(p):
            (w, shift), (v, gain) = p["layers"]
            h = gates.tanh(gates.matmul(x, w) + shift)
            return gates.mean(gates.sigmoid(gates.matmul(h, v) * gain)) * p["scale"]

        ours, ref = self.variant(fmlp.grad(f))(params), jax.grad(f)(params)
        assert_trees_close(ours, ref)
        assert isinstance(ours["layers"], list) and isinstance(ours["layers"][0], tuple)
        chex.assert_shape(ours["scale"], ())
        assert float(ours["scale"]) != 0.0
        assert check_grad(f, params) < 1e-9

    @chex.variants(with_jit=True, without_jit=True)
    def test_unused_inputs_and_constant_functions_get_zero_gradients(self):
        w, v = jnp.array([1.0, 2.0]), jnp.array([[3.0, 4.0, 5.0]])
        gw, gv = self.variant(fmlp.grad(lambda w, v: gates.sum(w * w), argnums=(0, 1)))(w, v)
        np.testing.assert_allclose(gw, 2.0 * w)
        chex.assert_shape(gv, v.shape)
        np.testing.assert_array_equal(gv, np.zeros_like(v))

        for const in [lambda w: jnp.float64(3.0), lambda w: 3.0, lambda w: gates.sum(jnp.ones(2))]:
            value, g = self.variant(fmlp.value_and_grad(const))(w)
            assert float(value) == pytest.approx(float(const(w)))
            chex.assert_shape(g, w.shape)
            np.testing.assert_array_equal(g, np.zeros(2))
            np.testing.assert_array_equal(g, jax.grad(const)(w))

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_of_the_identity_function(self):
        assert float(self.variant(fmlp.grad(lambda x: x))(3.0)) == 1.0
        assert float(self.variant(fmlp.grad(lambda x: -x))(3.0)) == -1.0

    @chex.variants(with_jit=True, without_jit=True)
    def test_vjp_of_a_non_scalar_output_matches_jax(self):
        kx, kw, kb, kc = jax.random.split(jax.random.key(0), 4)
        x = jax.random.normal(kx, (4, 3), jnp.float64)
        w = jax.random.normal(kw, (3, 2), jnp.float64)
        b = jax.random.normal(kb, (2,), jnp.float64)
        f = lambda w, b: gates.tanh(gates.add(gates.matmul(x, w), b))

        @self.variant
        def pullback(w, b, ct):
            out, vjp_fn = fmlp.vjp(f, w, b)
            return out, vjp_fn(ct), vjp_fn(2.0 * ct)  # vjp_fn is reusable

        ct = jax.random.normal(kc, (4, 2), jnp.float64)
        out, cts, cts_doubled = pullback(w, b, ct)
        ref_out, ref_vjp = jax.vjp(f, w, b)
        chex.assert_shape(out, (4, 2))
        np.testing.assert_allclose(out, ref_out, rtol=1e-12)
        assert_trees_close(cts, ref_vjp(ct))
        # vjp_fn is linear.
        assert_trees_close(cts_doubled, jax.tree.map(lambda g: 2.0 * g, ref_vjp(ct)))

        # A pytree output.
        g = lambda w: {"a": gates.exp(w), "b": (gates.sum(w), gates.tanh(w))}

        @self.variant
        def tree_pullback(w, cts):
            out, vjp_fn = fmlp.vjp(g, w)
            return out, vjp_fn(cts)

        cts = {"a": jnp.ones((3, 2)), "b": (jnp.float64(2.0), jnp.full((3, 2), -1.0))}
        out, w_cts = tree_pullback(w, cts)
        ref_out, ref_vjp = jax.vjp(g, w)
        assert_trees_close(out, ref_out)
        assert_trees_close(w_cts, ref_vjp(cts))


def test_has_aux_returns_aux_unchanged():
    # Not under jit: the aux holds strings, None and the very objects passed in.
    w = jnp.array([1.0, 2.0])
    aux = {"name": "run", "count": 3, "data": [jnp.arange(3)], "none": None}

    def f(w):
        h = gates.tanh(w)
        return gates.sum(h), {**aux, "h": h, "pair": (h, 2.5)}

    grads, out_aux = fmlp.grad(f, has_aux=True)(w)
    ref_grads, ref_aux = jax.grad(f, has_aux=True)(w)
    np.testing.assert_allclose(grads, ref_grads, rtol=1e-12)
    assert out_aux["name"] == "run"
    assert out_aux["count"] == 3
    assert out_aux["none"] is None
    assert out_aux["data"][0] is aux["data"][0]
    assert out_aux["pair"][1] == 2.5
    # Intermediate tracked values come back as plain arrays.
    for h in (out_aux["h"], out_aux["pair"][0]):
        assert isinstance(h, jax.Array)
        assert not isinstance(h, Tracked)
        np.testing.assert_allclose(h, jnp.tanh(w))
    np.testing.assert_allclose(out_aux["h"], ref_aux["h"])


def test_vjp_rejects_a_cotangent_of_the_wrong_shape_or_structure():
    _, vjp_fn = fmlp.vjp(gates.tanh, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"cotangent shape \(3, 2\) does not match .*\(2, 3\)"):
        vjp_fn(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="structure of the output"):
        vjp_fn((jnp.ones((2, 3)), jnp.ones((2, 3))))


# ----------------------------------------------------------------------------- errors


def _f_jnp_tanh(w):
    return gates.sum(jnp.tanh(w))


def _f_jnp_sum(w):
    return jnp.sum(gates.tanh(w))


def _f_jax_relu(w):
    return gates.sum(jax.nn.relu(w))


def _f_np_tanh(w):
    return gates.sum(np.tanh(w))


def _f_np_sum(w):
    return np.sum(gates.tanh(w))


@pytest.mark.parametrize(
    "fn, pattern, line",
    [
        (_f_jnp_tanh, r"'tanh'.*Use the gate fmlp\.gates\.tanh", "gates.sum(jnp.tanh(w))"),
        (_f_jnp_sum, r"sum'.*Use the gate fmlp\.gates\.sum", "jnp.sum(gates.tanh(w))"),
        (_f_jax_relu, r"Use the gate fmlp\.gates\.relu", "gates.sum(jax.nn.relu(w))"),
        (_f_np_tanh, r"Use the gate fmlp\.gates\.tanh", "gates.sum(np.tanh(w))"),
        (_f_np_sum, r"numpy\.sum.*Use the gate fmlp\.gates\.sum", "np.sum(gates.tanh(w))"),
    ],
    ids=["jnp.tanh", "jnp.sum", "jax.nn.relu", "np.tanh", "np.sum"],
)
def test_a_raw_array_function_on_a_tracked_value_names_the_gate(fn, pattern, line):
    with pytest.raises(NonDifferentiableError, match=pattern) as info:
        fmlp.grad(fn)(jnp.ones(3))
    message = str(info.value)
    # Points at the user's line, and says why there is no silent fallback.
    assert "test_engine.py" in message
    assert f"(`return {line}`)" in message
    assert "silent zero gradient" in message


@pytest.mark.parametrize(
    "fn, pattern",
    [
        (lambda w: float(w), r"float\(\)"),
        (lambda w: w if w else -w, r"bool\(\).*Python `if`"),
        (lambda w: gates.sum(np.asarray(w)), "conversion to a numpy array"),
        (lambda w: gates.sum(w % 2.0), "the operator %"),
        (lambda w: gates.sum(w // 2.0), "the operator //"),
        (lambda w: gates.sum(w) * len(w), r"len\(\)"),
        (lambda w: gates.sum(w) if gates.sum(w) > 0 else 0.0, "the operator >"),
    ],
    ids=["float", "if", "np.asarray", "mod", "floordiv", "len", "compare"],
)
def test_python_conversions_and_unsupported_operators_raise(fn, pattern):
    with pytest.raises(NonDifferentiableError, match=pattern):
        fmlp.grad(fn)(jnp.array([1.0, 2.0]))


@pytest.mark.parametrize(
    "fn, gate",
    [
        (lambda w: gates.sum(jnp.power(w, 3)), "power"),
        (lambda w: gates.sum(jnp.sqrt(w)), "sqrt"),
        (lambda w: gates.sum(jnp.abs(w)), "abs"),
        (lambda w: gates.sum(w.reshape(-1)), "reshape"),
        (lambda w: gates.sum(jnp.concatenate([w, w])), "concatenate"),
        (lambda w: gates.sum(jnp.clip(w, 0.0, 1.0)), "clip"),
        (lambda w: gates.sum(jnp.max(w, axis=0)), "maximum"),
        (lambda w: gates.sum(w) if gates.sum(w) > 0 else 0.0, "maximum"),
        (lambda w: gates.sum(jax.nn.swish(w)), "silu"),
        (lambda w: gates.sum(jax.nn.gelu(w)), "gelu"),
        (lambda w: gates.sum(jax.nn.logsumexp(w)), "logsumexp"),
        (lambda w: gates.sum(jnp.take(w, jnp.array([0]))), "index"),
    ],
    ids=[
        "power",
        "sqrt",
        "abs",
        "reshape",
        "concatenate",
        "clip",
        "max",
        "compare",
        "swish",
        "gelu",
        "logsumexp",
        "take",
    ],
)
def test_an_operation_without_a_gate_suggests_the_nearest_gate(fn, gate):
    with pytest.raises(NonDifferentiableError, match=rf"Use the gate fmlp\.gates\.{gate} instead"):
        fmlp.grad(fn)(jnp.array([[1.0, 2.0], [0.5, 0.25]]))


def test_an_operator_without_a_gate_suggests_no_gate_from_its_line():
    # `%` has no gate and no alias: the gates the line calls (sum) are no suggestion for it.
    with pytest.raises(NonDifferentiableError, match=r"the operator %") as info:
        fmlp.grad(lambda w: gates.sum(w % 2.0))(jnp.ones(2))
    assert "Use the gate" not in str(info.value)
    assert "register a gate" in str(info.value)


def test_non_differentiable_error_is_a_type_error():
    assert issubclass(NonDifferentiableError, TypeError)
    assert fmlp.NonDifferentiableError is NonDifferentiableError


def test_grad_of_a_non_scalar_output_raises():
    with pytest.raises(TypeError, match=r"scalar output; got shape \(3,\).*fmlp\.vjp"):
        fmlp.grad(gates.tanh)(jnp.ones(3))


def test_grad_with_respect_to_an_integer_argument_raises():
    with pytest.raises(TypeError, match=r"floating-point inputs.*argument 0.*int"):
        fmlp.grad(lambda n: gates.sum(n))(jnp.arange(3))
    with pytest.raises(TypeError, match="argument 1 has a leaf of dtype int"):
        fmlp.grad(lambda w, p: gates.sum(w), argnums=1)(jnp.ones(2), {"a": 1.0, "b": 3})


def test_argnums_out_of_range_raises():
    with pytest.raises(ValueError, match=r"argnums=\(0, 2\) refers to argument 2.*2 positional"):
        fmlp.grad(lambda a, b: a * b, argnums=(0, 2))(1.0, 2.0)
    with pytest.raises(ValueError, match="argnums=-3"):
        fmlp.grad(lambda a, b: a * b, argnums=-3)(1.0, 2.0)


def test_has_aux_requires_a_pair():
    with pytest.raises(TypeError, match="has_aux=True requires fun to return a pair"):
        fmlp.grad(lambda w: gates.sum(w), has_aux=True)(jnp.ones(2))
    with pytest.raises(TypeError, match="pair"):
        fmlp.grad(lambda w: (gates.sum(w), 1, 2), has_aux=True)(jnp.ones(2))


def test_nested_grad_raises_not_implemented():
    inner = fmlp.grad(lambda v: gates.sum(v * v))
    with pytest.raises(NotImplementedError, match="higher-order"):
        fmlp.grad(lambda w: gates.sum(inner(w)))(jnp.ones(2))
    # A closure over an outer tracked value reaches a gate with two tapes.
    with pytest.raises(NotImplementedError, match="higher-order"):
        fmlp.grad(lambda w: gates.sum(fmlp.grad(lambda v: gates.sum(v * w))(jnp.ones(2))))(
            jnp.ones(2)
        )


def test_a_tracked_value_that_escapes_raises_when_used_later():
    leaked = []

    def f(w):
        leaked.append(w)
        return gates.sum(w)

    fmlp.grad(f)(jnp.ones(2))
    (w,) = leaked
    assert isinstance(w, Tracked)
    with pytest.raises(ValueError, match=r"escaped the fmlp\.grad/vjp call"):
        gates.tanh(w)
    with pytest.raises(ValueError, match="escaped"):
        w + 1.0


# ----------------------------------------------------------------------------- broadcasting


class BroadcastingTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("vector", (3,)), ("row", (1, 3)), ("scalar", ()), ("full", (4, 3))
    )
    def test_bias_add_gradients_match_jax(self, bias_shape):
        kx, kb = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (4, 3), jnp.float64)
        b = jax.random.normal(kb, bias_shape, jnp.float64)
        weights = jnp.arange(12.0).reshape(4, 3)

        def f(x, b):
            return gates.sum(gates.multiply(gates.tanh(gates.add(x, b)), weights))

        gx, gb = self.variant(fmlp.grad(f, argnums=(0, 1)))(x, b)
        chex.assert_shape(gb, bias_shape)
        chex.assert_shape(gx, (4, 3))
        assert_trees_close((gx, gb), jax.grad(f, argnums=(0, 1))(x, b))
        # Bias on the left, and multiplication broadcasting the same way.
        g = lambda x, b: gates.sum(gates.tanh(gates.multiply(b, x)))
        ours = self.variant(fmlp.grad(g, argnums=(0, 1)))(x, b)
        assert_trees_close(ours, jax.grad(g, argnums=(0, 1))(x, b))


def test_unbroadcast_sums_back_to_the_input_shape():
    ct = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(unbroadcast(ct, (4, 3)), ct)
    np.testing.assert_array_equal(unbroadcast(ct, (3,)), [18.0, 22.0, 26.0])
    np.testing.assert_array_equal(unbroadcast(ct, (1, 3)), [[18.0, 22.0, 26.0]])
    np.testing.assert_array_equal(unbroadcast(ct, (4, 1)), [[3.0], [12.0], [21.0], [30.0]])
    np.testing.assert_array_equal(unbroadcast(ct, ()), 66.0)
    assert unbroadcast(ct, ()).shape == ()
    np.testing.assert_array_equal(unbroadcast(ct, (1, 1)), [[66.0]])
    ct3 = jnp.ones((2, 4, 3))
    np.testing.assert_array_equal(unbroadcast(ct3, (4, 1)), np.full((4, 1), 6.0))
    np.testing.assert_array_equal(unbroadcast(ct3, (1, 4, 3)), np.full((1, 4, 3), 2.0))
    np.testing.assert_array_equal(unbroadcast(ct3, [3]), np.full(3, 8.0))  # any sequence


@pytest.mark.parametrize(
    "ct_shape, shape", [((4, 3), (2,)), ((4, 3), (4, 2)), ((3,), (4, 3)), ((4, 3), (3, 3))]
)
def test_unbroadcast_rejects_an_impossible_shape(ct_shape, shape):
    with pytest.raises(ValueError, match=re.escape(f"shape {ct_shape} back to shape {shape}")):
        unbroadcast(jnp.ones(ct_shape), shape)


# ----------------------------------------------------------------------------- operators


def _operands():
    kw, kx, kb = jax.random.split(jax.random.key(0), 3)
    w = jax.random.normal(kw, (3, 2), jnp.float64)
    x = jax.random.normal(kx, (4, 3), jnp.float64)
    b = jax.random.normal(kb, (2,), jnp.float64)
    return w, x, b


# Each case: the function on a tracked ``w`` with Python operators, and the same function
# written explicitly with jnp (broadcasts spelled out, as rank promotion raises) for jax.grad.
OPERATOR_CASES = {
    "w + w": (lambda w, x, b: w + w, lambda w, x, b: w + w),
    "w - 2.0 * w": (lambda w, x, b: w - 2.0 * w, lambda w, x, b: w - 2.0 * w),
    "float * w": (lambda w, x, b: 2.0 * w, lambda w, x, b: 2.0 * w),
    "w * float": (lambda w, x, b: w * 3.0, lambda w, x, b: w * 3.0),
    "float + w": (lambda w, x, b: 1.5 + w * w, lambda w, x, b: 1.5 + w * w),
    "float - w": (lambda w, x, b: 1.0 - w * w, lambda w, x, b: 1.0 - w * w),
    "w - float": (lambda w, x, b: w * w - 1.0, lambda w, x, b: w * w - 1.0),
    "float / w": (lambda w, x, b: 1.0 / (w * w + 1.0), lambda w, x, b: 1.0 / (w * w + 1.0)),
    "w / float": (lambda w, x, b: w / 4.0, lambda w, x, b: w / 4.0),
    "w / w": (lambda w, x, b: w / (w * w + 1.0), lambda w, x, b: w / (w * w + 1.0)),
    "-w": (lambda w, x, b: -(w * w), lambda w, x, b: -(w * w)),
    "+w": (lambda w, x, b: +(w * w), lambda w, x, b: w * w),
    "array @ w": (lambda w, x, b: x @ w, lambda w, x, b: x @ w),
    "numpy @ w": (lambda w, x, b: np.asarray(x) @ w, lambda w, x, b: x @ w),
    "w @ w.T": (lambda w, x, b: w @ w.T, lambda w, x, b: w @ w.T),
    "w.T": (lambda w, x, b: w.T * w.T, lambda w, x, b: w.T * w.T),
    "w.T @ array.T": (lambda w, x, b: w.T @ x.T, lambda w, x, b: w.T @ x.T),
    "numpy + w": (
        lambda w, x, b: np.ones((3, 2)) + w * w,
        lambda w, x, b: jnp.ones((3, 2)) + w * w,
    ),
    "numpy scalar * w": (lambda w, x, b: np.float64(2.0) * w, lambda w, x, b: 2.0 * w),
    "array * w": (lambda w, x, b: jnp.full((3, 2), 0.5) * w, lambda w, x, b: 0.5 * w),
    "w ** 3": (lambda w, x, b: w**3, lambda w, x, b: w**3),
    "w ** -1": (lambda w, x, b: (w * w + 1.0) ** -1, lambda w, x, b: (w * w + 1.0) ** -1),
    "positive ** 0.5": (
        lambda w, x, b: (w * w + 1.0) ** 0.5,
        lambda w, x, b: jnp.sqrt(w * w + 1.0),
    ),
    "2.0 ** w": (lambda w, x, b: 2.0**w, lambda w, x, b: 2.0**w),
    "positive ** w": (
        lambda w, x, b: (w * w + 1.0) ** w,
        lambda w, x, b: (w * w + 1.0) ** w,
    ),
    "numpy power": (lambda w, x, b: np.power(w, 2), lambda w, x, b: w * w),
    "abs(w)": (lambda w, x, b: abs(w), lambda w, x, b: jnp.abs(w)),
    "numpy abs": (lambda w, x, b: np.abs(w - 0.1), lambda w, x, b: jnp.abs(w - 0.1)),
    "w[:, :1]": (lambda w, x, b: w[:, :1] * w[:, 1:], lambda w, x, b: w[:, :1] * w[:, 1:]),
    "w[1]": (lambda w, x, b: w[1] * w[2], lambda w, x, b: w[1] * w[2]),
    "w[::-1]": (lambda w, x, b: w[::-1] * w, lambda w, x, b: w[::-1] * w),
    "w[i, j]": (lambda w, x, b: w[0, 1] * w, lambda w, x, b: w[0, 1] * w),
    "x @ w[:, 0]": (lambda w, x, b: x @ w[:, 0], lambda w, x, b: x @ w[:, 0]),
    "(x @ w) + bias": (
        lambda w, x, b: x @ w + b,
        lambda w, x, b: x @ w + jnp.broadcast_to(b, (4, 2)),
    ),
    "bias + (x @ w)": (
        lambda w, x, b: b + x @ w,
        lambda w, x, b: jnp.broadcast_to(b, (4, 2)) + x @ w,
    ),
    "bias - (x @ w)": (
        lambda w, x, b: b - x @ w,
        lambda w, x, b: jnp.broadcast_to(b, (4, 2)) - x @ w,
    ),
    "(x @ w) * bias / bias": (
        lambda w, x, b: (x @ w) * b / (b * b + 1.0),
        lambda w, x, b: (x @ w) * jnp.broadcast_to(b / (b * b + 1.0), (4, 2)),
    ),
    "bias / (x @ w)^2": (
        lambda w, x, b: b / ((x @ w) * (x @ w) + 1.0),
        lambda w, x, b: jnp.broadcast_to(b, (4, 2)) / ((x @ w) * (x @ w) + 1.0),
    ),
}


class OperatorTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*sorted(OPERATOR_CASES))
    def test_python_operators_map_to_gates(self, case):
        w, x, b = _operands()
        ours_fn, jnp_fn = OPERATOR_CASES[case]
        f = lambda w: gates.sum(gates.tanh(ours_fn(w, x, b)))
        f_jnp = lambda w: jnp.sum(jnp.tanh(jnp_fn(w, x, b)))

        value, grads = self.variant(fmlp.value_and_grad(f))(w)
        ref_value, ref_grads = jax.value_and_grad(f_jnp)(w)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        chex.assert_shape(grads, w.shape)
        np.testing.assert_allclose(grads, ref_grads, rtol=1e-10, atol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_operators_build_gate_records(self):
        """The operators are gates, so a tracked result of each is a new tracked value."""
        seen = []

        def f(w):
            outs = [w + 1.0, 1.0 + w, w - 1.0, 1.0 - w, w * 2.0, 2.0 * w, w / 2.0, 2.0 / w]
            outs += [-w, +w, w @ w.T, w.T, jnp.ones((2, 3)) @ w]
            for out in outs:
                assert isinstance(out, Tracked)
                seen.append(out.shape)
            return gates.sum(w)

        self.variant(fmlp.grad(f))(jnp.ones((3, 2)))
        assert len(seen) == 13
        assert seen[-3:] == [(3, 3), (2, 3), (2, 2)]

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("matrix", (3, 4)), ("vector", (4,)), ("3d", (2, 3, 4)))
    def test_transpose_property_matches_jnp(self, shape):
        """``.T`` on a tracked value must mean what it means on a jnp array, or the same model
        code computes different things under fmlp.grad and jax.grad."""
        w = jnp.arange(1.0, 1.0 + np.prod(shape)).reshape(shape) / 10.0
        c = jnp.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape[::-1])

        def f(w):
            return gates.sum(gates.tanh(gates.multiply(w.T, c)))

        value, grads = self.variant(fmlp.value_and_grad(f))(w)
        ref_value, ref_grads = jax.value_and_grad(f)(w)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        np.testing.assert_allclose(grads, ref_grads, rtol=1e-10)


# ----------------------------------------------------------------------------- inspection


def test_trace_keeps_every_value_and_gradient_of_the_lecture_circuit():
    graph = fmlp.engine.trace(lambda x, y, z: (x + y) * z, -2.0, 5.0, -4.0)
    by_id = {n.id: n for n in graph.nodes}
    leaves = [n for n in graph.nodes if n.gate is None]
    assert [n.path for n in leaves] == ["[0]", "[1]", "[2]"]
    assert [float(n.value) for n in leaves] == [-2.0, 5.0, -4.0]
    assert [float(n.grad) for n in leaves] == [-4.0, -4.0, 3.0]
    q, f = (n for n in graph.nodes if n.gate is not None)
    assert (q.gate, float(q.value), float(q.grad)) == ("add", 3.0, -4.0)
    assert (f.gate, float(f.value), float(f.grad)) == ("multiply", -12.0, 1.0)
    assert (q.symbol, f.symbol) == ("+", "*") and {n.symbol for n in leaves} == {None}
    assert q.parents == (leaves[0].id, leaves[1].id) and f.parents == (q.id, leaves[2].id)
    assert graph.output == f.id and by_id[graph.output] is f


def test_trace_records_each_gate_symbol_when_it_runs():
    double = lambda g, out, x: (2.0 * g,)
    twice = gates.register("tmp_twice", lambda x: 2.0 * x, double, gates.tanh.samples, symbol="2·")
    try:
        graph = fmlp.engine.trace(lambda x: gates.sum(twice(x)), jnp.ones(2))
    finally:
        gates.unregister("tmp_twice")
    # The graph keeps the symbols, so it can be drawn after the gate is gone.
    symbols = [(n.gate, n.symbol) for n in graph.nodes]
    assert symbols == [(None, None), ("tmp_twice", "2·"), ("sum", "Σ")]


def test_trace_lists_undifferentiated_arguments_as_constants():
    graph = fmlp.engine.trace(
        lambda z, t: gates.mean(gates.softmax_cross_entropy(z, t)),
        jnp.zeros((2, 3)),
        jnp.array([0, 2]),
    )
    ((path, labels),) = graph.constants
    loss_node = next(n for n in graph.nodes if n.gate == "softmax_cross_entropy")
    assert path == "[1]" and loss_node.parents[1] is None and loss_node.inputs[1] is labels
    assert graph.nodes[0].grad.shape == (2, 3)


def test_trace_of_a_non_scalar_output_has_values_but_no_gradients():
    graph = fmlp.engine.trace(lambda x: gates.tanh(x), jnp.ones(3))
    assert all(n.grad is None for n in graph.nodes)
    assert graph.nodes[-1].value.shape == (3,)
