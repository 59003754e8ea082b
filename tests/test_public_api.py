"""The explicit public surface of fmlp, and the doctests of its main modules."""

import ast
import doctest
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import fmlp

ROOT = Path(__file__).resolve().parents[1]

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
    for name in ["REGISTRY", "Gate", "Sample", "SampleFn", "register", "unregister"]:
        assert hasattr(fmlp.gates, name), name
        assert getattr(fmlp.gates, name) is getattr(fmlp.engine, name), name
    for name in ["init", "apply", "loss", "dense", "mlp", "MLP", "regression_net",
                 "classification_net", "ACTIVATIONS", "OUTPUTS", "INITIALIZERS"]:  # fmt: skip
        assert hasattr(fmlp.nn, name), name
    for name in ["entropy", "cross_entropy", "kl_divergence"]:
        assert callable(getattr(fmlp.info, name)), name
    for name in ["check_gate", "check_grad", "GradientCheckError", "TOLERANCE"]:
        assert hasattr(fmlp.testing, name), name
    assert issubclass(fmlp.testing.GradientCheckError, AssertionError)
    assert callable(fmlp.engine.unbroadcast)
    assert fmlp.viz.GraphvizError is fmlp.errors.GraphvizError
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


# Run in a fresh interpreter: ``fmlp`` is a bare package there, so ``fmlp/__init__.py`` (which
# imports every module) does not run and only what each module imports itself gets loaded.
_IMPORTS_OF = textwrap.dedent(
    """
    import sys, types
    sys.modules["fmlp"] = package = types.ModuleType("fmlp")
    package.__path__ = [sys.argv[1]]
    __import__(sys.argv[2])
    print(sorted(m for m in sys.modules if m.startswith("fmlp.")))
    """
)


@pytest.mark.parametrize(
    "module, loaded",
    [
        ("fmlp.errors", ["fmlp.errors"]),
        ("fmlp.engine", ["fmlp.engine", "fmlp.errors"]),
        ("fmlp.gates", ["fmlp.engine", "fmlp.errors", "fmlp.gates"]),
    ],
)
def test_a_fresh_import_loads_only_the_layers_below(module, loaded):
    """No import circle: the engine depends on fmlp.errors alone, and gates on the engine."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS_OF, str(ROOT / "fmlp"), module],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(loaded)


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement anywhere in ``path`` names, inside functions too."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: inside the fmlp package
                base = f"fmlp.{base}".rstrip(".")
            if base == "fmlp":  # `from fmlp import gates` imports fmlp.gates
                modules |= {f"fmlp.{alias.name}" for alias in node.names}
            else:
                modules.add(base)
    return modules


@pytest.mark.parametrize("module, allowed", [("engine", {"fmlp.errors"}), ("errors", set())])
def test_no_import_statement_of_the_engine_names_another_fmlp_module(module, allowed):
    """Deferred imports inside functions count too: the old engine-gates circle was one."""
    imported = _imported_modules(ROOT / "fmlp" / f"{module}.py")
    assert {m for m in imported if m.split(".")[0] == "fmlp"} == allowed, imported
