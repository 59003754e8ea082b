"""The MLP as pure functions: init, apply, loss, and the lecture's two nets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fmlp
from fmlp import nn
from fmlp.testing import check_grad

# Expected weight variance of each scheme, from fan_in and fan_out.
EXPECTED_VARIANCE = {
    "glorot": lambda fan_in, fan_out: 2.0 / (fan_in + fan_out),
    "he": lambda fan_in, fan_out: 2.0 / fan_in,
    "lecun": lambda fan_in, fan_out: 1.0 / fan_in,
}


# ----------------------------------------------------------------------------- init


@pytest.mark.parametrize("sizes", [[2, 1], [5, 3], [4, 8, 2], [3, 7, 5, 6, 1]])
def test_init_shapes_and_zero_biases(key, sizes):
    params = nn.init(key, sizes)
    assert isinstance(params, list)
    assert len(params) == len(sizes) - 1
    for layer, n_in, n_out in zip(params, sizes[:-1], sizes[1:]):
        assert set(layer) == {"W", "b"}
        assert layer["W"].shape == (n_in, n_out)
        assert layer["b"].shape == (n_out,)
        assert layer["W"].dtype == layer["b"].dtype == jnp.float32
        np.testing.assert_array_equal(layer["b"], np.zeros(n_out))
        if n_in * n_out > 1:
            assert float(jnp.std(layer["W"])) > 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_init_dtype(key, dtype):
    params = nn.init(key, [3, 4, 2], dtype=dtype)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))


def test_init_is_deterministic_in_the_key_and_layers_differ(key):
    a, b = nn.init(key, [6, 6, 6]), nn.init(key, [6, 6, 6])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0]["W"], a[1]["W"])
    c = nn.init(jax.random.key(1), [6, 6, 6])
    assert not np.allclose(a[0]["W"], c[0]["W"])


@pytest.mark.parametrize("scheme", sorted(nn.INITIALIZERS))
def test_each_initializer_has_roughly_the_right_variance(key, scheme):
    fan_in, fan_out = 512, 256
    (layer,) = nn.init(key, [fan_in, fan_out], scheme=scheme, dtype=jnp.float64)
    w = np.asarray(layer["W"])
    expected = EXPECTED_VARIANCE[scheme.split("_")[0]](fan_in, fan_out)
    assert abs(w.mean()) < 0.05 * np.sqrt(expected)
    assert w.var() == pytest.approx(expected, rel=0.2)
    if scheme.endswith("_uniform"):
        limit = np.sqrt(3.0 * expected)  # U(-a, a) has variance a^2 / 3
        assert np.abs(w).max() <= limit * (1 + 1e-6)
        assert np.abs(w).max() > 0.95 * limit


def test_he_normal_variance_on_a_square_layer(key):
    (layer,) = nn.init(key, [512, 512], scheme="he_normal")
    assert float(jnp.var(layer["W"])) == pytest.approx(2.0 / 512, rel=0.2)


@pytest.mark.parametrize("sizes", [[], [5], [5, 0], [3, -2, 1], [3, 2.5, 1]])
def test_init_rejects_bad_sizes(key, sizes):
    with pytest.raises(ValueError, match="sizes must list at least two positive layer widths"):
        nn.init(key, sizes)


def test_init_rejects_an_unknown_scheme(key):
    with pytest.raises(ValueError, match=r"Unknown initialisation scheme 'xavier'.*he_normal"):
        nn.init(key, [3, 2], scheme="xavier")


# ----------------------------------------------------------------------------- apply


@pytest.fixture
def net(key):
    kp, kx = jax.random.split(key)
    params = nn.init(kp, [4, 5, 3], dtype=jnp.float64)
    x = jax.random.normal(kx, (7, 4), jnp.float64)
    return params, x


def _reference_apply(params, x, phi, phi_out):
    for layer in params[:-1]:
        x = phi(x @ layer["W"] + jnp.broadcast_to(layer["b"], (x.shape[0], layer["b"].shape[0])))
    last = params[-1]
    return phi_out(x @ last["W"] + jnp.broadcast_to(last["b"], (x.shape[0], last["b"].shape[0])))


@pytest.mark.parametrize("activation", sorted(nn.ACTIVATIONS))
def test_apply_output_shapes_and_values(net, activation):
    params, x = net
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases
    phi = {
        "tanh": jnp.tanh,
        "relu": jax.nn.relu,
        "sigmoid": jax.nn.sigmoid,
        "leaky_relu": jax.nn.leaky_relu,
        "identity": lambda s: s,
    }[activation]
    out = nn.apply(params, x, activation=activation)
    assert out.shape == (7, 3)
    np.testing.assert_allclose(out, _reference_apply(params, x, phi, lambda s: s), rtol=1e-12)
    probs = nn.apply(params, x, activation=activation, output="softmax")
    np.testing.assert_allclose(probs, jax.nn.softmax(out), rtol=1e-12)


def test_apply_softmax_rows_sum_to_one(net):
    params, x = net
    probs = nn.apply(params, x, output="softmax")
    assert probs.shape == (7, 3)
    assert bool(jnp.all(probs > 0.0))
    np.testing.assert_allclose(jnp.sum(probs, axis=-1), np.ones(7), rtol=1e-12)


def test_apply_identity_output_is_the_last_affine_layer(net):
    params, x = net
    out = nn.apply(params, x, output="identity")
    h = jnp.tanh(x @ params[0]["W"] + jnp.broadcast_to(params[0]["b"], (7, 5)))
    np.testing.assert_allclose(out, h @ params[1]["W"], rtol=1e-12)  # b2 = 0 at init


def test_apply_one_example_and_a_batch_of_one(net):
    params, x = net
    batch = nn.apply(params, x)
    np.testing.assert_allclose(nn.apply(params, x[0]), batch[0], rtol=1e-12)
    assert nn.apply(params, x[:1]).shape == (1, 3)


def test_apply_rejects_unknown_names(net):
    params, x = net
    with pytest.raises(ValueError, match=r"Unknown activation 'swish'; expected one of \["):
        nn.apply(params, x, activation="swish")
    with pytest.raises(ValueError, match=r"Unknown output 'sigmoid'.*softmax"):
        nn.apply(params, x, output="sigmoid")
    with pytest.raises(ValueError, match="Unknown output 'logits'"):
        nn.loss(params, x, jnp.zeros(7, jnp.int32), output="logits")


# ----------------------------------------------------------------------------- loss


def test_cross_entropy_head_is_minus_mean_log_softmax_of_the_correct_class(net, key):
    params, x = net
    y = jax.random.randint(key, (7,), 0, 3)
    logits = nn.apply(params, x)
    expected = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1))
    np.testing.assert_allclose(nn.loss(params, x, y), expected, rtol=1e-12)
    # One-hot rows give the same loss.
    one_hot = jax.nn.one_hot(y, 3, dtype=jnp.float64)
    np.testing.assert_allclose(nn.loss(params, x, one_hot), expected, rtol=1e-12)


def test_regression_head_is_the_batch_mean_of_half_the_summed_square(net, key):
    params, x = net
    t = jax.random.normal(key, (7, 3), jnp.float64)
    o = nn.apply(params, x)
    expected = jnp.mean(0.5 * jnp.sum((o - t) ** 2, axis=-1))
    np.testing.assert_allclose(nn.loss(params, x, t, output="identity"), expected, rtol=1e-12)


@pytest.mark.parametrize("output", ["softmax", "identity"])
def test_masked_loss_equals_the_loss_on_the_unpadded_rows(net, key, output):
    params, x = net
    y = jax.random.randint(key, (7,), 0, 3)
    if output == "identity":
        y = jax.random.normal(key, (7, 3), jnp.float64)
    mask = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    # Padding rows hold garbage that must not matter.
    x_padded = x.at[4:].set(100.0)
    masked = nn.loss(params, x_padded, y, output=output, mask=mask)
    unpadded = nn.loss(params, x[:4], y[:4], output=output)
    np.testing.assert_allclose(masked, unpadded, rtol=1e-12)
    assert not np.isclose(nn.loss(params, x_padded, y, output=output), unpadded)
    # Same for the gradients, by the engine.
    g_masked = fmlp.grad(lambda p: nn.loss(p, x_padded, y, output=output, mask=mask))(params)
    g_unpadded = fmlp.grad(lambda p: nn.loss(p, x[:4], y[:4], output=output))(params)
    for a, b in zip(jax.tree.leaves(g_masked), jax.tree.leaves(g_unpadded)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- lecture nets


def test_mlp_validates_names_up_front():
    with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
        nn.mlp([2, 3], activation="gelu")
    with pytest.raises(ValueError, match="Unknown output 'linear'"):
        nn.mlp([2, 3], output="linear")
    with pytest.raises(ValueError, match="Unknown initialisation scheme 'zeros'"):
        nn.mlp([2, 3], scheme="zeros")


def test_lecture_nets_architecture():
    reg = nn.regression_net(3, 8, 2)
    assert (reg.sizes, reg.activation, reg.output) == ((3, 8, 2), "tanh", "identity")
    clf = nn.classification_net(4, 6, 3)
    assert (clf.sizes, clf.activation, clf.output) == ((4, 6, 3), "tanh", "softmax")


def _regression_problem(key):
    kx, kn = jax.random.split(key)
    x = jax.random.uniform(kx, (64, 3), jnp.float64, -1.0, 1.0)
    y = jnp.stack([jnp.sin(2.0 * x[:, 0]) + x[:, 1], x[:, 1] * x[:, 2] - 0.5], axis=-1)
    return x, y + 0.01 * jax.random.normal(kn, y.shape, jnp.float64)


def _classification_problem(key):
    centers = jnp.array([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    y = jnp.arange(60) % 3
    x = centers[y] + 0.5 * jax.random.normal(key, (60, 4), jnp.float64)
    return x, y


def _train(net, params, x, y, lr, steps):
    """Full-batch gradient descent with the engine's gradient, as one compiled loop."""

    def step(_, p):
        return jax.tree.map(lambda a, g: a - lr * g, p, fmlp.grad(net.loss)(p, x, y))

    return jax.jit(lambda p: jax.lax.fori_loop(0, steps, step, p))(params)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_lecture_net_shapes_gradient_and_training(key, kind):
    kp, kd = jax.random.split(key)
    if kind == "regression":
        net = nn.regression_net(3, 16, 2)
        x, y = _regression_problem(kd)
        lr = 0.2
    else:
        net = nn.classification_net(4, 8, 3)
        x, y = _classification_problem(kd)
        lr = 0.5
    params = net.init(kp, dtype=jnp.float64)
    out = net.apply(params, x)
    assert out.shape == (x.shape[0], net.sizes[-1])
    if kind == "classification":
        np.testing.assert_allclose(jnp.sum(out, axis=-1), np.ones(x.shape[0]), rtol=1e-12)
    initial = net.loss(params, x, y)
    assert initial.shape == ()
    assert check_grad(net.loss, params, x, y) < 1e-9

    trained = _train(net, params, x, y, lr, steps=60)
    final = net.loss(trained, x, y)
    assert np.isfinite(final)
    assert float(final) < 0.25 * float(initial)
    if kind == "classification":
        accuracy = jnp.mean(jnp.argmax(net.apply(trained, x), axis=-1) == y)
        assert float(accuracy) >= 0.9


def test_the_head_table_decides_activation_loss_and_task():
    assert set(nn.HEADS) == {"softmax", "identity", "exp"}
    assert nn.HEADS["softmax"] == (fmlp.gates.softmax, fmlp.gates.softmax_cross_entropy,
                                   "classification")  # fmt: skip
    assert nn.HEADS["identity"].loss is fmlp.gates.squared_error
    assert nn.HEADS["identity"].task == "regression"
    assert nn.HEADS["exp"] == (fmlp.gates.exp, fmlp.gates.exp_poisson_deviance, "regression")
    assert {name: head.activation for name, head in nn.HEADS.items()} == nn.OUTPUTS


@pytest.mark.parametrize("output", ["softmax", "identity", "exp"])
def test_the_model_value_is_the_functions_it_replaces(key, output):
    net = nn.mlp([4, 6, 3], activation="relu", output=output)
    params = net.init(key)
    x = jax.random.normal(jax.random.key(5), (10, 4), jnp.float32)
    y = jnp.arange(10) % 3 if output == "softmax" else jax.random.normal(key, (10, 3), jnp.float32)
    if output == "exp":
        y = jnp.abs(y)  # counts or rates
    np.testing.assert_array_equal(
        net.apply(params, x), nn.apply(params, x, activation="relu", output=output)
    )
    np.testing.assert_array_equal(
        net.logits(params, x), nn.apply(params, x, activation="relu", output="identity")
    )
    assert net.per_example_loss(params, x, y).shape == (10,)
    np.testing.assert_array_equal(
        net.loss(params, x, y), nn.loss(params, x, y, activation="relu", output=output)
    )


def test_the_model_value_computes_in_its_compute_dtype(key):
    net = nn.mlp([4, 6, 3], compute_dtype="bfloat16")
    assert net.compute_dtype == "bfloat16"
    params = net.init(key, dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(5), (10, 4), jnp.float32)
    out = net.apply(params, x)
    assert out.dtype == jnp.float32  # cast back before the head
    ref = nn.apply(params, x, activation="tanh", output="softmax", compute_dtype="bfloat16")
    np.testing.assert_array_equal(out, ref)
    assert not np.array_equal(out, nn.mlp([4, 6, 3]).apply(params, x))
