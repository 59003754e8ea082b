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
        "gelu": lambda s: jax.nn.gelu(s, approximate=False),
        "gelu_tanh": lambda s: jax.nn.gelu(s, approximate=True),
        "silu": jax.nn.silu,
        "softplus": jax.nn.softplus,
        "elu": jax.nn.elu,
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
    with pytest.raises(ValueError, match=r"Unknown output 'relu'.*softmax"):
        nn.apply(params, x, output="relu")
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
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        nn.mlp([2, 3], activation="swish")
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        nn.mlp([2, 3], loss="hinge")
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
    g = fmlp.gates
    assert {
        "cross_entropy": (g.softmax, g.softmax_cross_entropy, "classification"),
        "binary_cross_entropy": (g.sigmoid, g.sigmoid_binary_cross_entropy, "multilabel"),
        "squared_error": (g.identity, g.squared_error, "regression"),
        "huber": (g.identity, g.huber, "regression"),
        "absolute_error": (g.identity, g.absolute_error, "regression"),
        "poisson": (g.exp, g.exp_poisson_deviance, "regression"),
    } == nn.HEADS
    outputs = {"softmax": g.softmax, "sigmoid": g.sigmoid, "identity": g.identity, "exp": g.exp}
    assert outputs == nn.OUTPUTS


@pytest.mark.parametrize(
    ("output", "loss", "head"),
    [
        (None, None, "cross_entropy"),
        ("softmax", None, "cross_entropy"),
        ("sigmoid", None, "binary_cross_entropy"),
        ("identity", None, "squared_error"),
        (None, "huber", "huber"),
        ("identity", "absolute_error", "absolute_error"),
    ],
)
def test_output_and_loss_name_one_head(output, loss, head):
    assert nn.head_name(output, loss) == head
    net = nn.mlp([3, 2], output=output, loss=loss)
    assert (net.loss_name, net.output) == (head, nn.HEADS[head].activation.name)


def test_an_output_that_does_not_fit_the_loss_is_refused():
    with pytest.raises(ValueError, match=r"^output: 'softmax' does not fit loss 'huber'"):
        nn.mlp([3, 2], output="softmax", loss="huber")


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


# ----------------------------------------------------------------------------- building blocks


def _targets(key, loss, batch, outputs, dtype=jnp.float64):
    """Targets for ``loss``'s head: class ids, 0/1 labels, or real values."""
    task = nn.HEADS[loss].task
    if task == "classification":
        return jax.random.randint(key, (batch,), 0, outputs)
    if task == "multilabel":
        return jax.random.bernoulli(key, 0.5, (batch, outputs)).astype(dtype)
    return jax.random.normal(key, (batch, outputs), dtype)


# Each model option on its own and a few together; every one differentiated by our rules.
BLOCKS = {
    "dropout": {"dropout": 0.3},
    "dropout per layer": {"dropout": (0.5, 0.0, 0.2)},
    "layer norm": {"layer_norm": True},
    "residual": {"residual": True},
    "activation per layer": {"activation": ("gelu", "silu", "elu")},
    "label smoothing": {"label_smoothing": 0.1},
    "class weights": {"class_weight": (1.0, 2.0, 0.5)},
    "huber": {"loss": "huber"},
    "absolute error": {"loss": "absolute_error"},
    "binary cross-entropy": {"loss": "binary_cross_entropy"},
    "smoothed multi-label": {"loss": "binary_cross_entropy", "label_smoothing": 0.2},
    "all at once": {
        "dropout": 0.2,
        "layer_norm": True,
        "residual": True,
        "label_smoothing": 0.05,
        "activation": ("relu", "gelu_tanh", "softplus"),
        "class_weight": (0.5, 1.0, 1.5),
    },
}


@pytest.mark.parametrize("options", list(BLOCKS.values()), ids=list(BLOCKS))
def test_every_building_block_is_differentiated_by_our_rules_like_jax(key, options):
    kp, kx, ky, kd = jax.random.split(key, 4)
    net = nn.mlp([5, 6, 6, 6, 3], **{"activation": "tanh", **options})
    params = jax.tree.map(lambda p: p + 0.1, net.init(kp, dtype=jnp.float64))  # LN scale != 1
    x = jax.random.normal(kx, (9, 5), jnp.float64)
    y = _targets(ky, net.loss_name, 9, 3)
    mask = jnp.array([1.0] * 7 + [0.0] * 2)
    assert check_grad(lambda p: net.loss(p, x, y, mask, key=kd), params) < 1e-9
    if net.stochastic:  # with another key, other masks: another loss
        assert not np.isclose(net.loss(params, x, y, key=kd), net.loss(params, x, y, key=key))


def test_dropout_is_on_only_with_a_key(key):
    net = nn.mlp([4, 32, 32, 3], activation="relu", dropout=0.5)
    plain = net._replace(dropout=0.0)
    params = net.init(key)
    x = jax.random.normal(jax.random.key(1), (16, 4), jnp.float32)
    y = jnp.arange(16) % 3
    # Evaluation and prediction: no key, no dropout.
    np.testing.assert_array_equal(net.apply(params, x), plain.apply(params, x))
    np.testing.assert_array_equal(net.loss(params, x, y), plain.loss(params, x, y))
    # Training: the key draws the masks, the same key the same masks.
    k = jax.random.key_data(jax.random.key(7))
    dropped = net.logits(params, x, key=k)
    assert not np.allclose(dropped, plain.logits(params, x))
    np.testing.assert_array_equal(dropped, net.logits(params, x, key=k))
    assert plain.logits(params, x, key=k).shape == dropped.shape
    np.testing.assert_array_equal(plain.logits(params, x, key=k), plain.logits(params, x))


def test_traced_dropout_and_label_smoothing_are_on_whatever_their_value(key):
    # A sweep traces each member's rate and ε: a traced value trains as the number does, and
    # a traced 0 still runs dropout and smoothing, which then change nothing.
    net = nn.mlp([4, 8, 8, 3], dropout=(0.3, 0.0), label_smoothing=0.1)
    params = net.init(key, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (16, 4), jnp.float64)
    y, k = jnp.arange(16) % 3, jax.random.key_data(jax.random.key(7))

    def loss(rate, eps):
        return net._replace(dropout=(rate, 0.0), label_smoothing=eps).loss(params, x, y, key=k)

    traced = jax.jit(loss)
    np.testing.assert_allclose(traced(0.3, 0.1), loss(0.3, 0.1), rtol=1e-12)
    np.testing.assert_allclose(traced(0.0, 0.0), loss(0.0, 0.0), rtol=1e-12)
    assert net._replace(dropout=0.0).stochastic is False
    assert jax.jit(lambda r: jnp.asarray(net._replace(dropout=r).stochastic))(0.0)


def test_layer_norm_adds_a_scale_and_offset_per_hidden_layer(key):
    net = nn.mlp([4, 8, 6, 3], layer_norm=True)
    params = net.init(key)
    assert [sorted(layer) for layer in params] == [["W", "b", "offset", "scale"]] * 2 + [["W", "b"]]
    np.testing.assert_array_equal(params[1]["scale"], np.ones(6))
    np.testing.assert_array_equal(params[1]["offset"], np.zeros(6))
    plain = nn.mlp([4, 8, 6, 3]).init(key)  # the same weights, layer norm or not
    for a, b in zip(params, plain):
        np.testing.assert_array_equal(a["W"], b["W"])
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float32)
    norm = lambda s: fmlp.gates.layer_norm(s, jnp.ones_like(s[0]), jnp.zeros_like(s[0]))
    h = jnp.tanh(norm(x @ params[0]["W"]))
    h = jnp.tanh(norm(h @ params[1]["W"]))
    np.testing.assert_allclose(net.logits(params, x), h @ params[2]["W"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"params: the hidden layers hold \['W', 'b'\]"):
        net.logits(plain, x)


def test_residual_skips_only_between_hidden_layers_of_equal_width(key):
    net = nn.mlp([4, 4, 6, 6, 3], activation="relu", residual=True)
    params = net.init(key)
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float32)
    dense = lambda layer, h: h @ layer["W"] + layer["b"][None]
    h1 = jax.nn.relu(dense(params[0], x))  # from the inputs: no skip, though 4 == 4
    h2 = jax.nn.relu(dense(params[1], h1))  # 4 -> 6: no skip
    h3 = h2 + jax.nn.relu(dense(params[2], h2))  # 6 -> 6: skip
    np.testing.assert_allclose(net.logits(params, x), dense(params[3], h3), rtol=1e-5)
    with pytest.raises(ValueError, match=r"^residual: no hidden layer has the width"):
        nn.mlp([4, 4, 6, 3], residual=True)


def test_label_smoothing_mixes_the_targets_with_uniform_ones(key):
    net = nn.mlp([4, 5, 3], label_smoothing=0.3)
    params = net.init(key, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (6, 4), jnp.float64)
    y = jnp.arange(6) % 3
    t = 0.7 * jax.nn.one_hot(y, 3, dtype=jnp.float64) + 0.1
    expected = -jnp.sum(t * jax.nn.log_softmax(net.logits(params, x)), axis=-1)
    np.testing.assert_allclose(net.per_example_loss(params, x, y), expected, rtol=1e-12)
    sigmoid = nn.mlp([4, 5, 3], loss="binary_cross_entropy", label_smoothing=0.3)
    labels = (jnp.arange(18).reshape(6, 3) % 2).astype(jnp.float64)
    z = sigmoid.logits(params, x)
    smoothed = fmlp.gates.sigmoid_binary_cross_entropy(z, 0.7 * labels + 0.15)
    np.testing.assert_allclose(sigmoid.per_example_loss(params, x, labels), smoothed, rtol=1e-12)


def test_class_weights_scale_each_examples_loss(key):
    net = nn.mlp([4, 5, 3], class_weight=(1.0, 3.0, 0.5))
    params = net.init(key, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (6, 4), jnp.float64)
    y = jnp.arange(6) % 3
    plain = net._replace(class_weight=None).per_example_loss(params, x, y)
    weights = jnp.array([1.0, 3.0, 0.5])[y]
    np.testing.assert_allclose(net.per_example_loss(params, x, y), plain * weights, rtol=1e-12)
    one_hot = jax.nn.one_hot(y, 3, dtype=jnp.float64)  # rows: the weight of their class
    np.testing.assert_allclose(net.per_example_loss(params, x, one_hot), plain * weights)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"activation": ("relu",)}, r"^activation: a list needs one entry per hidden layer \(2\)"),
        ({"dropout": (0.1, 0.2, 0.3)}, r"^dropout: a list needs one entry per hidden layer"),
        ({"dropout": 1.0}, r"^dropout: expected rates in \[0, 1\), got 1\.0"),
        ({"dropout": (0.1, -0.5)}, r"^dropout: expected rates in \[0, 1\)"),
        ({"label_smoothing": 1.0}, r"^label_smoothing: expected a value in \[0, 1\)"),
        ({"label_smoothing": 0.1, "loss": "huber"}, r"^label_smoothing: .* regression head"),
        ({"class_weight": (1.0, 2.0)}, r"^class_weight: expected 3 positive weights"),
        ({"class_weight": (1.0, 2.0, 0.0)}, r"^class_weight: expected 3 positive weights"),
        ({"class_weight": (1.0, 1.0, 1.0), "loss": "huber"}, r"^class_weight: .*not of 'huber'"),
    ],
)
def test_mlp_refuses_options_that_do_not_fit_the_net(options, match):
    with pytest.raises(ValueError, match=match):
        nn.mlp([4, 5, 5, 3], **options)


def test_functional_apply_and_loss_take_the_same_options(key):
    net = nn.mlp([4, 5, 5, 3], activation=("relu", "gelu"), layer_norm=True, residual=True,
                 loss="huber")  # fmt: skip
    params = net.init(key)
    x = jax.random.normal(jax.random.key(1), (6, 4), jnp.float32)
    t = jax.random.normal(jax.random.key(2), (6, 3), jnp.float32)
    options = {"activation": ("relu", "gelu"), "layer_norm": True, "residual": True}
    np.testing.assert_array_equal(nn.apply(params, x, **options), net.apply(params, x))
    np.testing.assert_array_equal(
        nn.loss(params, x, t, output=None, loss="huber", **options), net.loss(params, x, t)
    )
