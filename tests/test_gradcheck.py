"""`fmlp gradcheck`: the checker over registered gates, user modules included."""

import textwrap

import pytest

from fmlp import cli, gates

USER_GATES = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    from fmlp import gates

    gates.register(
        "user_softplus",
        forward=lambda x: jnp.logaddexp(x, 0.0),
        vjp=lambda g, out, x: (g * jax.nn.sigmoid(x),),  # d softplus = sigmoid
        samples=gates.REGISTRY["tanh"].samples,
    )
    gates.register(
        "wrong_square",
        forward=jnp.square,
        vjp=lambda g, out, x: (g * x,),  # wrong: d x^2 = 2 x
        samples=gates.REGISTRY["square"].samples,
    )
    """
)


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "my_gates.py"
    path.write_text(USER_GATES)
    yield path
    for name in ("user_softplus", "wrong_square"):
        if name in gates.REGISTRY:
            gates.unregister(name)


def test_gradcheck_passes_builtin_and_correct_user_gates(user_module, capsys):
    argv = ["gradcheck", "--module", str(user_module), "--gate", "user_softplus", "--gate", "tanh"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] + "/" + line.split()[1]: line for line in out.splitlines()[1:5]}
    assert set(rows) == {
        "user_softplus/float32",
        "user_softplus/float64",
        "tanh/float32",
        "tanh/float64",
    }
    assert all(line.endswith("ok") for line in rows.values())
    assert "4 of 4 gate checks agree with the oracles." in out


def test_gradcheck_catches_a_wrong_vjp_and_exits_1(user_module, capsys):
    argv = ["gradcheck", "--module", str(user_module), "--gate", "wrong_square", "--dtype",
            "float64"]  # fmt: skip
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    table = captured.out.split("\n\n")[0].splitlines()
    (row,) = [line for line in table if line.startswith("wrong_square ") and " float" in line]
    assert row.split()[1] == "float64" and row.endswith("FAIL")
    assert float(row.split()[2]) > 0.1  # vs jax.vjp
    assert "vs finite differences" in captured.out
    assert "Wrong VJPs: wrong_square" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gradcheck", "--module", "no_such_module_xyz"], "no_such_module_xyz"),
        (["gradcheck", "--module", "missing_file.py"], "no such file"),
        # fmlp.errors.UnknownGateError: the message as is, not in KeyError's quotes
        (["gradcheck", "--gate", "no_such_gate"], "error: No gate named ['no_such_gate']; "),
    ],
)
def test_gradcheck_bad_input_exits_2(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
