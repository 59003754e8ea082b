"""Tests for fmlp.train: the one compiled epoch and its options, the model from the config,
evaluation by head, the optax helper; and the layer's seams (one run-directory owner, one
error base, no import circle).

Small synthetic problems; every assertion is about values, never wall time.
"""

import ast
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fmlp
from fmlp import config, data, errors, nn, train

ROOT = Path(__file__).resolve().parents[1]
N, FEATURES, CLASSES, BATCH = 100, 6, 3, 16  # 7 batches, the last one partial


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((N, FEATURES)), jnp.float32)
    y = jnp.asarray(rng.integers(0, CLASSES, N), jnp.int32)
    net = nn.mlp([FEATURES, 8, CLASSES], activation="relu", output="softmax")
    return net, x, y


def run_epochs(net, x, y, *, epochs=2, tx=None, w=None, extra=(), loss=None, **options):
    tx = tx or optax.sgd(0.1, momentum=0.9)
    state = train.init_state(net, tx, seed=3)
    epoch = train.make_epoch(loss or net.loss, tx, n=len(x), batch_size=BATCH, **options)
    losses = []
    for _ in range(epochs):
        state, value = epoch(state, x, y, w, *extra)
        losses.append(float(value))
    return state, losses


def test_permuted_and_gathered_epochs_train_the_same_batches(problem):
    net, x, y = problem
    permuted, loss_p = run_epochs(net, x, y, permute=True)
    gathered, loss_g = run_epochs(net, x, y, permute=False)
    chex.assert_trees_all_close(permuted.params, gathered.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(loss_p, loss_g, rtol=1e-6)
    assert int(permuted.step) == int(gathered.step) == 2 * 7
    assert int(permuted.epoch) == 2
    assert np.array_equal(permuted.key, gathered.key)


def test_the_epoch_loss_is_the_mean_of_the_example_losses(problem):
    net, x, y = problem
    tx = optax.sgd(0.0)  # params never move: the epoch's loss is the loss of the whole set
    state = train.init_state(net, tx, seed=3)
    _, value = train.make_epoch(net.loss, tx, n=N, batch_size=BATCH)(state, x, y)
    whole = net.loss(train.init_state(net, tx, seed=3).params, x, y)
    np.testing.assert_allclose(float(value), float(whole), rtol=1e-6)


def test_unit_weights_are_the_plain_epoch_and_zero_weights_drop_examples(problem):
    net, x, y = problem
    plain, _ = run_epochs(net, x, y)
    ones, _ = run_epochs(net, x, y, w=jnp.ones(N, jnp.float32))
    chex.assert_trees_all_close(plain.params, ones.params, rtol=1e-6, atol=1e-7)
    dropped, _ = run_epochs(net, x, y, w=jnp.zeros(N, jnp.float32).at[:50].set(1.0))
    assert not np.allclose(plain.params[0]["W"], dropped.params[0]["W"])


def test_skip_empty_leaves_state_untouched_by_a_batch_of_zero_weight(problem):
    net, x, y = problem
    tx = optax.adam(0.01)  # adam moves params even on a zero gradient (its moments decay)
    zero = jnp.zeros(N, jnp.float32)
    start = train.init_state(net, tx, seed=3)
    skipped, _ = run_epochs(net, x, y, epochs=1, tx=tx, w=zero, skip_empty=True)
    chex.assert_trees_all_equal(skipped.params, start.params)
    chex.assert_trees_all_equal(skipped.opt_state, start.opt_state)


def test_extra_loss_arguments_reach_the_loss(problem):
    net, x, y = problem

    def penalised(params, xb, yb, wb, alpha):
        return fmlp.gates.add(net.loss(params, xb, yb, wb), alpha * 0.0)

    ref, _ = run_epochs(net, x, y)
    got, _ = run_epochs(net, x, y, loss=penalised, extra=(jnp.float32(2.0),))
    chex.assert_trees_all_close(ref.params, got.params, rtol=1e-6, atol=1e-7)


def test_unrolled_and_shuffle_free_epochs(problem):
    net, x, y = problem
    ref, _ = run_epochs(net, x, y)
    unrolled, _ = run_epochs(net, x, y, unroll=3)
    chex.assert_trees_all_close(ref.params, unrolled.params, rtol=1e-6, atol=1e-7)
    ordered, _ = run_epochs(net, x, y, shuffle=False)
    assert not np.allclose(ref.params[0]["W"], ordered.params[0]["W"])


def test_the_engine_and_jax_backends_agree(problem):
    net, x, y = problem
    ours, loss_e = run_epochs(net, x, y, gradients="engine")
    oracle, loss_j = run_epochs(net, x, y, gradients="jax")
    chex.assert_trees_all_close(ours.params, oracle.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss_e, loss_j, rtol=1e-5)


def test_has_aux_differentiates_the_value_and_reports_the_aux(problem):
    net, x, y = problem

    def reported_twice(params, xb, yb, wb):
        value = net.loss(params, xb, yb, wb)
        return value, fmlp.gates.multiply(value, 2.0)

    ref, loss_ref = run_epochs(net, x, y)
    got, loss_got = run_epochs(net, x, y, loss=reported_twice, has_aux=True)
    chex.assert_trees_all_close(ref.params, got.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(loss_got, 2 * np.asarray(loss_ref), rtol=1e-6)


def test_a_streamed_epoch_is_the_compiled_epoch_on_host_batches(problem):
    """Same order and steps from host-resident data, each batch formed by ``gather``."""
    net, x, y = problem
    w = jnp.asarray(np.random.default_rng(2).uniform(0, 2, N), jnp.float32)
    ref, loss_ref = run_epochs(net, x, y, w=w)
    tx = optax.sgd(0.1, momentum=0.9)
    state = train.init_state(net, tx, seed=3)
    gathered = []

    def gather(x_host, rows):
        gathered.append(len(rows))
        return x_host[rows]

    epoch = train.make_streamed_epoch(net.loss, tx, n=N, batch_size=BATCH, gather=gather)
    losses = []
    for _ in range(2):
        state, value = epoch(state, np.asarray(x), np.asarray(y), np.asarray(w))
        losses.append(float(value))
    assert gathered == [BATCH] * 14  # 2 epochs of 7 batches, never the whole set
    chex.assert_trees_all_close(ref.params, state.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss_ref, losses, rtol=1e-5)
    assert int(state.step) == int(ref.step) and np.array_equal(state.key, ref.key)


def test_without_donation_the_input_state_stays_usable(problem):
    net, x, y = problem
    tx = optax.sgd(0.1)
    state = train.init_state(net, tx, seed=3)
    epoch = train.make_epoch(net.loss, tx, n=N, batch_size=BATCH, donate=False)
    new, _ = epoch(state, x, y)
    again, _ = epoch(state, x, y)  # a donated state would be deleted by now
    chex.assert_trees_all_equal(new.params, again.params)


def test_init_state_is_the_seeds_params_and_key():
    net = nn.mlp([4, 5, 2])
    a = train.init_state(net, optax.sgd(0.1), seed=7)
    b = train.init_state(net, optax.adam(0.1), seed=7)
    chex.assert_trees_all_equal(a.params, b.params)
    assert np.array_equal(a.key, b.key)
    chex.assert_shape([a.params[0]["W"], a.params[1]["W"]], [(4, 5), (5, 2)])
    chex.assert_type([a.step, a.epoch], jnp.int32)
    assert not np.array_equal(a.key, train.init_state(net, optax.sgd(0.1), seed=8).key)


def test_build_model_follows_the_config():
    cfg = config.from_dict(
        {"model": {"hidden": [7, 5], "activation": "relu", "init": "he_normal"},
         "precision": "bfloat16"}
    )  # fmt: skip
    net = train.build_model(cfg, num_features=3, num_outputs=4)
    assert net == nn.MLP((3, 7, 5, 4), "relu", "cross_entropy", "he_normal", "bfloat16")
    assert train.metric_name(net) == "accuracy"
    regression = config.from_dict(
        {"model": {"output": "identity"}, "data": {"name": "lecture_regression"}}
    )
    assert train.metric_name(train.build_model(regression, num_features=8, num_outputs=2)) == "mse"
    blocks = config.from_dict(
        {"model": {"hidden": [6, 6], "activation": ["gelu", "elu"], "dropout": [0.5, 0.1],
                   "layer_norm": True, "residual": True, "label_smoothing": 0.1}}
    )  # fmt: skip
    net = train.build_model(blocks, num_features=3, num_outputs=4, class_weight=(1.0,) * 4)
    assert (net.activations, net.dropout_rates) == (("gelu", "elu"), (0.5, 0.1))
    assert (net.layer_norm, net.residual, net.label_smoothing) == (True, True, 0.1)
    assert net.class_weight == (1.0,) * 4 and net.stochastic


def test_evaluate_reports_the_heads_metrics(problem):
    net, x, y = problem
    params = net.init(jax.random.PRNGKey(0))
    result = train.make_evaluate(net, n=N, batch_size=32)(params, x, y)
    logits = net.logits(params, x)
    np.testing.assert_allclose(float(result["loss"]), float(net.loss(params, x, y)), rtol=1e-6)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=1) == np.asarray(y)))
    assert float(result["accuracy"]) == pytest.approx(accuracy)
    assert float(jnp.sum(result["confusion"])) == N
    regression = nn.mlp([FEATURES, 4, 2], output="identity")
    targets = jnp.asarray(np.random.default_rng(1).standard_normal((N, 2)), jnp.float32)
    rparams = regression.init(jax.random.PRNGKey(1))
    got = train.make_evaluate(regression, n=N, batch_size=32)(rparams, x, targets)
    mse = float(jnp.mean(jnp.square(regression.apply(rparams, x) - targets)))
    assert float(got["mse"]) == pytest.approx(mse, rel=1e-5)
    mae = float(jnp.mean(jnp.abs(regression.apply(rparams, x) - targets)))
    assert float(got["mae"]) == pytest.approx(mae, rel=1e-5)
    assert set(got) == {"loss", "mse", "mae"}
    assert train.metric_names(regression) == ("mse", "mae")

    poisson = nn.mlp([FEATURES, 4, 2], output="exp")  # its mse is that of the rates exp(s)
    got = train.make_evaluate(poisson, n=N, batch_size=32)(rparams, x, jnp.abs(targets))
    mse = float(jnp.mean(jnp.square(poisson.apply(rparams, x) - jnp.abs(targets))))
    assert float(got["mse"]) == pytest.approx(mse, rel=1e-5)


def test_evaluate_reports_per_label_accuracy_and_f1_for_a_sigmoid_head():
    net = nn.mlp([2, 3], loss="binary_cross_entropy")  # no hidden layer: logits = x W + b
    f32 = lambda rows: jnp.array(rows, jnp.float32)
    params = [{"W": jnp.eye(2, 3, dtype=jnp.float32), "b": f32([0.0, 0.0, -1.0])}]
    x = f32([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # label 2: never
    y = f32([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # predicted: label 0 for rows 0-1 (right), label 1 for rows 0 and 2 (row 1 missed)
    got = train.make_evaluate(net, n=4, batch_size=3)(params, x, y)
    np.testing.assert_allclose(got["label_accuracy"], [1.0, 0.75, 1.0])
    np.testing.assert_allclose(got["label_f1"], [1.0, 0.8, 0.0])  # 2 tp / (2 tp + 1 fn)
    assert float(got["accuracy"]) == pytest.approx(2.75 / 3)
    assert float(got["f1"]) == pytest.approx(1.8 / 3)
    loss = jnp.mean(fmlp.gates.sigmoid_binary_cross_entropy(net.logits(params, x), y))
    assert float(got["loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert train.metric_names(net) == ("accuracy", "f1")


def test_a_keyed_epoch_draws_its_dropout_masks_from_the_state_key(problem):
    _, x, y = problem
    net = nn.mlp([FEATURES, 16, CLASSES], activation="relu", dropout=0.5)
    first, loss_a = run_epochs(net, x, y, keyed=True, epochs=2)
    again, loss_b = run_epochs(net, x, y, keyed=True, epochs=2)
    chex.assert_trees_all_equal(first.params, again.params)  # the same key, the same masks
    assert loss_a == loss_b
    unmasked, loss_c = run_epochs(net, x, y, epochs=2)  # no key: the loss runs without dropout
    assert not np.allclose(first.params[0]["W"], unmasked.params[0]["W"])
    assert loss_a[0] > loss_c[0]
    # Two epochs in one go, or one and then one more: the same masks.
    tx = optax.sgd(0.1, momentum=0.9)
    epoch = train.make_epoch(net.loss, tx, n=N, batch_size=BATCH, keyed=True, donate=False)
    state = train.init_state(net, tx, seed=3)
    for _ in range(2):
        state, _ = epoch(state, x, y)
    chex.assert_trees_all_equal(state.params, first.params)
    steps = train.step_keys(jax.random.split(train.init_state(net, tx, seed=3).key)[1], 7)
    assert steps.shape == (7, 2) and len({tuple(np.asarray(k)) for k in steps}) == 7


def test_the_gradient_check_sees_the_first_steps_dropout_mask(problem):
    _, x, y = problem
    net = nn.mlp([FEATURES, 16, CLASSES], activation="relu", dropout=0.5)
    state = train.init_state(net, optax.sgd(0.1), seed=3)
    errors = train.make_gradient_check(net.loss, n=N, batch_size=BATCH, keyed=True)(
        state.params, x, y, state.key
    )
    assert max(float(e) for e in errors.values()) < 1e-5


def test_class_weights_balanced_and_given():
    y = np.array([0, 0, 0, 1, 2, 2])
    assert train.class_weights("balanced", y, 4) == (6 / 12, 6 / 4, 6 / 8, 1.0)  # 3 absent
    assert train.class_weights([1.0, 2.0, 3.0], y, 3) == (1.0, 2.0, 3.0)
    assert train.class_weights(None, y, 3) is None
    with pytest.raises(errors.ConfigError, match=r"data\.class_weight: expected one weight per"):
        train.class_weights([1.0, 2.0], y, 3)


def test_optax_dtypes_lets_optax_run_under_strict_promotion():
    schedule = optax.cosine_decay_schedule(0.1, 10)
    with pytest.raises(Exception, match="promot"):
        schedule(jnp.int32(3))  # this suite runs with strict dtype promotion
    with train.optax_dtypes():
        assert float(schedule(jnp.int32(0))) == pytest.approx(0.1)
    params = {"w": jnp.ones(3, jnp.float32)}
    tx = optax.adam(0.1)
    new, _ = train.apply_optimizer(tx, {"w": jnp.ones(3, jnp.float32)}, tx.init(params), params)
    assert new["w"].dtype == jnp.float32 and float(new["w"][0]) < 1.0


def test_a_permuted_copy_fits_for_small_data():
    assert train.permuted_copy_fits(np.zeros((10, 3), np.float32), np.zeros(10, np.int32))
    huge = jax.ShapeDtypeStruct((2**40, 1), jnp.float32)  # 4 TiB: no device holds two
    assert not train.permuted_copy_fits(huge, jax.ShapeDtypeStruct((2**40,), jnp.int32))


# ----------------------------------------------------------------------------- the seams


RUN_FILES = (
    "config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "model.json", "normalizer.npz"
)  # fmt: skip


def test_only_the_run_module_names_the_run_directorys_files():
    for path in sorted((ROOT / "fmlp").rglob("*.py")):
        if path.name == "run.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings:
                    continue
                named = [f for f in RUN_FILES if f in node.value]
                assert not named, f"{path.relative_to(ROOT)} names {named}: ask fmlp.run.RunDir"


def test_every_bad_input_error_derives_from_input_error_and_keeps_its_builtin_base():
    bases = {
        errors.ConfigError: ValueError,
        errors.DataError: ValueError,
        errors.RunDirectoryError: ValueError,
        errors.UnknownGateError: KeyError,
        errors.NoCheckpointError: FileNotFoundError,
        errors.ModuleLoadError: FileNotFoundError,
    }
    for error, builtin in bases.items():
        assert issubclass(error, errors.InputError) and issubclass(error, builtin), error
    for error in (errors.TrainingDiverged, errors.GradientMismatch, errors.DistributedError):
        assert issubclass(error, errors.FmlpError) and not issubclass(error, errors.InputError)
    # The old homes keep working.
    assert config.ConfigError is errors.ConfigError and data.DataError is errors.DataError
    assert train.TrainingDiverged is errors.TrainingDiverged
    assert fmlp.parallel.DistributedError is errors.DistributedError


def test_fmlp_train_does_not_import_the_benchmark():
    code = "import sys, fmlp, fmlp.cli; assert 'fmlp.bench' not in sys.modules, sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_auto_batching_takes_the_permuted_copy_only_for_overhead_bound_cpu_steps():
    x, y = np.zeros((100, 784), np.float32), np.zeros(100, np.int32)
    tiny, small = nn.mlp([784, 16, 16, 10]), nn.mlp([784, 256, 256, 10])
    assert jax.default_backend() == "cpu"  # the suite runs on the CPU
    assert train.use_permuted_copy("auto", tiny, x, y, batch_size=16)
    assert not train.use_permuted_copy("auto", small, x, y, batch_size=128)
    assert not train.use_permuted_copy("auto", tiny, x, y, batch_size=64)
    assert train.use_permuted_copy("permuted", small, x, y, batch_size=128)
    assert not train.use_permuted_copy("gathered", tiny, x, y, batch_size=16)
    huge = jax.ShapeDtypeStruct((2**40, 1), jnp.float32)  # no copy of it fits
    assert not train.use_permuted_copy("permuted", tiny, huge, y, batch_size=16)
    with pytest.raises(ValueError, match="batching must be one of"):
        train.use_permuted_copy("sometimes", tiny, x, y, batch_size=16)


# ----------------------------------------------------------------------------- the optimizer


def optimizer_config(**keys) -> config.OptimizerConfig:
    return config.from_dict({"optimizer": keys}).optimizer


def test_accumulation_equals_one_step_on_the_k_times_larger_batch(problem):
    net, x, y = problem
    x, y = x[:96], y[:96]  # 6 batches of 16, 2 of 48: no partial batch
    opt = optimizer_config(learning_rate=0.1, momentum=0.9, clip_norm=1.0)

    def train_epochs(batch_size, accumulate):
        steps = 96 // batch_size
        optimizer = train.make_optimizer(
            opt, steps_per_epoch=steps, epochs=2, accumulate=accumulate
        )
        state = train.init_state(net, optimizer.tx, seed=3)
        epoch = train.make_epoch(net.loss, optimizer.tx, n=96, batch_size=batch_size, shuffle=False)
        for _ in range(2):
            state, _ = epoch(state, x, y)
        return state, float(optimizer.learning_rate(state))

    accumulated, rate = train_epochs(16, 3)
    big, big_rate = train_epochs(48, 1)
    chex.assert_trees_all_close(accumulated.params, big.params, rtol=1e-5, atol=1e-6)
    assert int(accumulated.step) == 12 and rate == big_rate == pytest.approx(0.1)
    single, _ = train_epochs(16, 1)  # without accumulation: 12 steps, other params
    assert not np.allclose(single.params[0]["W"], big.params[0]["W"], atol=1e-4)


def test_plateau_lowers_the_rate_from_the_fed_loss_without_a_new_program(problem):
    net, x, y = problem
    opt = optimizer_config(
        learning_rate=0.1, schedule="plateau", warmup_epochs=1,
        plateau={"factor": 0.5, "patience": 2, "cooldown": 1, "min_scale": 0.2},
    )  # fmt: skip
    optimizer = train.make_optimizer(opt, steps_per_epoch=7, epochs=11)
    state = train.init_state(net, optimizer.tx, seed=3)
    epoch = train.make_epoch(net.loss, optimizer.tx, n=N, batch_size=BATCH)
    feed = jax.jit(optimizer.plateau)
    # Epoch 1 warms up (its loss is not fed); then 1.0 is the best, two epochs without a gain
    # halve the scale, the cooldown ignores one, two more halve it again, the cooldown, and
    # two more reach the floor (0.2 of the rate). Each rate is the one an epoch trained with.
    losses = [9.0, 1.0, 1.5, 1.2, 1.3, 1.1, 1.4, 1.0, 1.0, 1.0, 1.0]
    rates = []
    for loss in losses:
        state, _ = epoch(state, x, y)
        rates.append(float(optimizer.learning_rate(state)))
        state = feed(state, jnp.float32(loss))
    warming = 0.1 * 6 / 7  # the warm-up's last step: 0 up to 0.1 over 7 steps
    expected = [warming, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert epoch._cache_size() == 1  # the scale is state: one program for every rate
    assert feed._cache_size() == 1


def test_plateau_needs_a_validation_split():
    with pytest.raises(errors.ConfigError, match=r"data\.validation_fraction.*plateau"):
        config.from_dict(
            {"optimizer": {"schedule": "plateau"}, "data": {"validation_fraction": 0.0}}
        )


def test_weight_decay_skips_every_leaf_but_the_weights_unless_decay_biases():
    params = [
        {"W": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(3, jnp.float32)},
        {"scale": jnp.ones(3, jnp.float32), "offset": jnp.ones(3, jnp.float32)},  # a norm layer
    ]
    assert train.decay_mask(params) == [{"W": True, "b": False}, {"scale": False, "offset": False}]
    zero = jax.tree.map(jnp.zeros_like, params)
    for name in ("sgd", "adam", "adamw"):
        for decay_biases in (False, True):
            opt = optimizer_config(
                name=name, learning_rate=0.1, weight_decay=0.5, decay_biases=decay_biases
            )
            tx = train.make_optimizer(opt, steps_per_epoch=1, epochs=1).tx
            new, _ = train.apply_optimizer(tx, zero, tx.init(params), params)
            moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new, params)
            others = not decay_biases
            assert moved == [{"W": True, "b": not others}, {"scale": not others,
                             "offset": not others}], (name, decay_biases)  # fmt: skip


def test_adams_b1_b2_eps_reach_optax():
    params = {"W": jnp.full((3,), 2.0, jnp.float32)}
    grads = {"W": jnp.asarray([1e-3, 0.5, -2.0], jnp.float32)}
    keys = {"b1": 0.5, "b2": 0.75, "eps": 0.1}
    tx = train.make_optimizer(
        optimizer_config(name="adam", learning_rate=0.1, **keys), steps_per_epoch=1, epochs=1
    ).tx
    ours, _ = train.apply_optimizer(tx, grads, tx.init(params), params)
    reference = optax.adam(0.1, **keys)
    theirs, _ = train.apply_optimizer(reference, grads, reference.init(params), params)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6)
    default = optax.adam(0.1)
    plain, _ = train.apply_optimizer(default, grads, default.init(params), params)
    assert not np.allclose(ours["W"], plain["W"])


# ----------------------------------------------------------------------------- progress


def test_the_epoch_reports_its_steps_to_the_host_every_n_and_at_the_end(problem):
    net, x, y = problem
    calls = []
    plain, _ = run_epochs(net, x, y, epochs=1)
    reported, losses = run_epochs(
        net, x, y, epochs=1, progress=lambda done, total: calls.append((int(done), float(total))),
        progress_every=3,
    )  # fmt: skip
    jax.effects_barrier()
    assert [done for done, _ in calls] == [3, 6, 7]  # 7 steps, the last one partial
    assert calls[-1][1] / N == pytest.approx(losses[0], rel=1e-6)  # the sum of the losses
    chex.assert_trees_all_equal(plain.params, reported.params)
