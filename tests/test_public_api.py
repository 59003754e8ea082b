"""The explicit public surface of fmlp, and the doctests of its main modules."""

import doctest
import types

import pytest

import fmlp

REQUIRED_GATES = [
    "add",
    "subtract",
    "multiply",
    "negate",
    "matmul",
    "sum",
    "mean",
    "tanh",
    "sigmoid",
    "relu",
    "leaky_relu",
    "identity",
    "exp",
    "log",
    "softmax",
    "log_softmax",
    "softmax_cross_entropy",
    "squared_error",
    "mean_squared_error",
]


def test_top_level_functions_are_the_engines():
    assert fmlp.grad is fmlp.engine.grad
    assert fmlp.value_and_grad is fmlp.engine.value_and_grad
    assert fmlp.vjp is fmlp.engine.vjp
    assert fmlp.NonDifferentiableError is fmlp.engine.NonDifferentiableError
    assert issubclass(fmlp.NonDifferentiableError, Exception)
    for fn in (fmlp.grad, fmlp.value_and_grad, fmlp.vjp):
        assert callable(fn)
        assert fn.__doc__


@pytest.mark.parametrize("name", ["gates", "nn", "info", "testing", "engine"])
def test_public_modules(name):
    module = getattr(fmlp, name)
    assert isinstance(module, types.ModuleType)
    assert module.__name__ == f"fmlp.{name}"
    assert module.__doc__


def test_public_names_of_the_modules():
    for name in ["REGISTRY", "Gate", "Sample", "register", "unregister"]:
        assert hasattr(fmlp.gates, name), name
    for name in ["init", "apply", "loss", "dense", "mlp", "MLP", "regression_net",
                 "classification_net", "ACTIVATIONS", "OUTPUTS", "INITIALIZERS"]:  # fmt: skip
        assert hasattr(fmlp.nn, name), name
    for name in ["entropy", "cross_entropy", "kl_divergence"]:
        assert callable(getattr(fmlp.info, name)), name
    for name in ["check_gate", "check_grad", "GradientCheckError", "TOLERANCE"]:
        assert hasattr(fmlp.testing, name), name
    assert issubclass(fmlp.testing.GradientCheckError, AssertionError)
    assert callable(fmlp.engine.unbroadcast)
    assert isinstance(fmlp.__version__, str)


def test_every_registered_gate_is_reachable_by_name():
    assert fmlp.gates.REGISTRY
    for name, gate in fmlp.gates.REGISTRY.items():
        assert getattr(fmlp.gates, name) is gate
        assert isinstance(gate, fmlp.gates.Gate)
        assert gate.name == name
        assert callable(gate.forward) and callable(gate.vjp) and callable(gate.samples)


@pytest.mark.parametrize("name", REQUIRED_GATES)
def test_required_gate_is_registered(name):
    assert name in fmlp.gates.REGISTRY
    assert isinstance(getattr(fmlp.gates, name), fmlp.gates.Gate)


@pytest.mark.parametrize("module", [fmlp.engine, fmlp.info, fmlp.testing], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module, verbose=False, report=False)
    assert result.attempted > 0
    assert result.failed == 0
