"""Tests for fmlp.viz: computation graphs read back from their DOT source, ``fmlp graph``, and
the training plots.

The DOT is parsed here with a small regex over the scheme :class:`fmlp.viz.GraphDrawing`
documents, so the tests check what a reader of the file gets, not the objects behind it.
"""

import ast
import concurrent.futures
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fmlp
from fmlp import cli, errors, gates, nn, viz

ROOT = Path(__file__).resolve().parents[1]
CLASSIFICATION = "configs/lecture_classification.yaml"
HAS_DOT = shutil.which("dot") is not None
NEEDS_DOT = pytest.mark.skipif(not HAS_DOT, reason="needs Graphviz: apt-get install graphviz")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------- a DOT reader

_NODE = re.compile(r"^  ([nc]\d+) \[(.*)\];$")
_EDGE = re.compile(r"^  ([nc]\d+) -> (n\d+) \[(.*)\];$")
_ATTR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"(?:, |$)')


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], s)


def _attrs(text: str) -> dict[str, str]:
    pairs = _ATTR.findall(text)
    assert "".join(f'{k}="{v}", ' for k, v in pairs) == text + ", ", text  # nothing skipped
    return {k: _unescape(v) for k, v in pairs}


def parse_dot(dot: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, int]]]:
    """``({node id: attributes}, [(source, target, input number)])``, in file order."""
    lines = dot.splitlines()
    assert lines[0] == "digraph fmlp {" and lines[-1] == "}", dot
    nodes, edges = {}, []
    for line in lines[1:-1]:
        if m := _EDGE.match(line):
            edges.append((m[1], m[2], int(_attrs(m[3])["input"])))
        elif m := _NODE.match(line):
            nodes[m[1]] = _attrs(m[2])
        else:
            assert line.startswith(("  rankdir=", "  node [")), line
    return nodes, edges


def by_name(nodes: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {a["name"]: a | {"id": i} for i, a in nodes.items()}


def gate_order(nodes: dict[str, dict[str, str]]) -> list[str]:
    return [a["gate"] for a in nodes.values() if a["kind"] == "gate"]


def inputs_of(node_id: str, edges: list[tuple[str, str, int]]) -> list[str]:
    return [s for s, t, _ in sorted(edges, key=lambda e: e[2]) if t == node_id]


def circuit(x, y, z):
    return (x + y) * z  # the lecture's f(x, y, z) = (x + y) z, with + and * as gates


def check_circuit(dot: str) -> None:
    nodes, edges = parse_dot(dot)
    named = by_name(nodes)
    assert list(named) == ["x", "y", "z", "+", "*"]
    expected = {"x": (-2, -4), "y": (5, -4), "z": (-4, 3), "+": (3, -4), "*": (-12, 1)}
    for name, (value, grad) in expected.items():
        assert (named[name]["value"], named[name]["grad"]) == (str(value), str(grad)), name
        assert f"value {value}\ngrad {grad}" in named[name]["label"], named[name]["label"]
        assert named[name]["dims"] == "()"
    assert named["+"]["gate"] == "add" and named["*"]["gate"] == "multiply"
    assert {named[n]["kind"] for n in "xyz"} == {"input"}
    assert named["*"].get("output") == "true"
    assert sum("output" in a for a in nodes.values()) == 1
    ids = {a["id"]: n for n, a in named.items()}
    assert sorted((ids[s], ids[t], i) for s, t, i in edges) == sorted(
        [("x", "+", 0), ("y", "+", 1), ("+", "*", 0), ("z", "*", 1)]
    )


# ----------------------------------------------------------------------------- viz.graph


def test_the_lecture_circuit_has_its_values_and_gradients():
    drawing = viz.graph(circuit, -2.0, 5.0, -4.0)
    check_circuit(drawing.dot)
    assert [(n.name, n.value, n.grad) for n in drawing.nodes] == [
        ("x", "-2", "-4"), ("y", "5", "-4"), ("z", "-4", "3"), ("+", "3", "-4"), ("*", "-12", "1"),
    ]  # fmt: skip
    assert drawing.edges == (("n0", "n3", 0), ("n1", "n3", 1), ("n3", "n4", 0), ("n2", "n4", 1))
    assert drawing.node("n4").gate == "multiply"


def _classifier(key, sizes, dtype=jnp.float64):
    net = nn.mlp(sizes, activation="tanh", output="softmax")
    params = net.init(key, dtype=dtype)
    x = jax.random.normal(jax.random.fold_in(key, 1), (2, sizes[0]), dtype)
    t = jnp.array([0, sizes[-1] - 1], jnp.int32)

    def loss(params, x, t):
        return nn.loss(params, x, t, activation="tanh", output="softmax")

    return loss, params, x, t


def test_a_classification_net_is_drawn_layer_by_layer(key):
    loss, params, x, t = _classifier(key, [3, 5, 4])
    nodes, edges = parse_dot(viz.graph(loss, params, x, t).dot)
    order = gate_order(nodes)
    assert order[:5] == ["matmul", "add", "tanh", "matmul", "add"], order
    assert order[-2:] == ["softmax_cross_entropy", "mean"], order
    named = by_name(nodes)
    assert list(named)[:6] == [
        "params[0]['W']", "params[0]['b']", "params[1]['W']", "params[1]['b']", "x", "t",
    ]  # fmt: skip
    gate_ids = [i for i, a in nodes.items() if a["kind"] == "gate"]
    matmul1, add1, _, matmul2, add2 = gate_ids[:5]
    crent, mean = gate_ids[-2:]
    leaf = {name: a["id"] for name, a in named.items()}
    assert inputs_of(matmul1, edges) == [leaf["x"], leaf["params[0]['W']"]]
    assert inputs_of(add1, edges) == [matmul1, leaf["params[0]['b']"]]
    assert inputs_of(matmul2, edges)[1] == leaf["params[1]['W']"]
    assert inputs_of(add2, edges) == [matmul2, leaf["params[1]['b']"]]
    assert inputs_of(crent, edges)[1] == leaf["t"]
    assert inputs_of(mean, edges) == [crent]
    assert nodes[crent]["name"] == "CrEnt" and nodes[matmul1]["name"] == "@"
    # The labels are a constant leaf: a value, no gradient.
    assert named["t"]["kind"] == "constant" and named["t"]["id"].startswith("c")
    assert named["t"]["value"] == "[0, 3]" and named["t"]["dtype"] == "int32"
    assert "grad" not in named["t"] and "grad" not in named["t"]["label"]
    assert nodes[mean]["output"] == "true" and nodes[mean]["grad"] == "1"


def test_large_arrays_show_their_shape_but_no_values(key):
    loss, params, x, t = _classifier(key, [3, 5, 4])
    nodes, _ = parse_dot(viz.graph(loss, params, x, t).dot)
    named = by_name(nodes)
    for name, dims in [("params[0]['W']", "(3, 5)"), ("params[0]['b']", "(5,)"), ("x", "(2, 3)")]:
        assert named[name]["dims"] == dims
        assert dims in named[name]["label"]
        assert "value" not in named[name] and "grad" not in named[name], name
        assert "value" not in named[name]["label"], name
    hidden = [a for a in nodes.values() if a.get("gate") == "tanh"]
    assert hidden[0]["dims"] == "(2, 5)" and "value" not in hidden[0]
    # Small ones do show them: the per-example losses (2,) and the mean ().
    assert re.fullmatch(r"\[\S+, \S+\]", named["CrEnt"]["value"])
    # max_elements moves the line.
    nodes, _ = parse_dot(viz.graph(loss, params, x, t, max_elements=15).dot)
    assert "value" in by_name(nodes)["params[0]['W']"]
    nodes, _ = parse_dot(viz.graph(loss, params, x, t, max_elements=0).dot)
    assert not any("value" in a for a in nodes.values())


@pytest.mark.parametrize("output", ["softmax", "identity"])
def test_leaf_gradients_are_fmlp_grad(key, output):
    net = nn.mlp([2, 2, 2], activation="tanh", output=output)
    params = net.init(key, dtype=jnp.float64)
    x = jax.random.normal(jax.random.fold_in(key, 1), (2, 2), jnp.float64)
    if output == "softmax":
        t = jnp.array([1, 0], jnp.int32)
    else:
        t = jax.random.normal(jax.random.fold_in(key, 2), (2, 2), jnp.float64)

    def loss(params, x, t):
        return net.loss(params, x, t)

    named = by_name(parse_dot(viz.graph(loss, params, x, t).dot)[0])
    argnums = (0, 1) if output == "softmax" else (0, 1, 2)
    grads = fmlp.grad(loss, argnums=argnums)(params, x, t)
    expected = {"x": (x, grads[1])}
    for i, layer in enumerate(params):
        for k in ("W", "b"):
            expected[f"params[{i}]['{k}']"] = (layer[k], grads[0][i][k])
    if output == "identity":
        expected["t"] = (t, grads[2])
    # Exact shortest round-trip decimals: parsing gives back the very same float64s.
    drawn = {
        name: tuple(np.array(ast.literal_eval(named[name][k])) for k in ("value", "grad"))
        for name in expected
    }
    chex.assert_trees_all_equal(drawn, expected)
    assert named["mean"]["value"] == str(np.float64(loss(params, x, t))).removesuffix(".0")


def test_literal_constants_and_argument_names():
    nodes, edges = parse_dot(viz.graph(lambda x: gates.mean(2.0 * x * x), jnp.arange(2.0)).dot)
    named = by_name(nodes)
    assert named["const"]["kind"] == "constant" and named["const"]["value"] == "2"
    assert "grad" not in named["const"]
    assert (named["const"]["id"], "n1", 0) in edges
    assert named["x"]["grad"] == "[0, 2]"  # d mean(2 x^2) / dx = 2 x

    star = by_name(parse_dot(viz.graph(lambda *xs: xs[0] * xs[1], 3.0, 4.0).dot)[0])
    assert (star["xs[0]"]["grad"], star["xs[1]"]["grad"]) == ("4", "3")
    custom = by_name(parse_dot(viz.graph(circuit, 1.0, 2.0, 3.0, names=["a", "b", "c"]).dot)[0])
    assert list(custom)[:3] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"one name per argument \(3\), got 2"):
        viz.graph(circuit, 1.0, 2.0, 3.0, names=["a", "b"])


def test_a_gate_is_drawn_with_the_symbol_it_was_registered_with():
    quadruple = (lambda x: 4.0 * x, lambda g, out, x: (4.0 * g,), gates.tanh.samples)
    named = gates.register("tmp_quad", *quadruple)
    shown = gates.register("tmp_quad4", *quadruple, symbol='4"x')
    try:
        nodes, _ = parse_dot(viz.graph(lambda x: shown(named(x)), 1.0).dot)
    finally:
        gates.unregister("tmp_quad")
        gates.unregister("tmp_quad4")
    drawn = [(a["name"], a["gate"], a["label"]) for a in nodes.values() if a["kind"] == "gate"]
    # No symbol given: the gate's name; a quote in a symbol is escaped like any DOT value.
    assert drawn == [
        ("tmp_quad", "tmp_quad", "tmp_quad\n()\nvalue 4\ngrad 4"),
        ('4"x', "tmp_quad4", '4"x\n()\nvalue 16\ngrad 1'),
    ]


def test_an_unregistered_gate_is_drawn_with_its_own_symbol():
    """The drawing asks the gate, never the registry (a Gate need not be registered)."""
    gate = gates.Gate("tmp_loose", jnp.tanh, lambda g, out, x: (g,), gates.tanh.samples, "L")
    assert "tmp_loose" not in gates.REGISTRY
    drawing = viz.graph(lambda x: gate(x), 0.5)
    assert [(n.name, n.gate) for n in drawing.nodes] == [("x", None), ("L", "tmp_loose")]


def test_a_non_scalar_output_has_values_but_no_gradients():
    nodes, _ = parse_dot(viz.graph(lambda x: gates.tanh(x), jnp.zeros(3)).dot)
    assert [a["value"] for a in nodes.values()] == ["[0, 0, 0]", "[0, 0, 0]"]
    assert not any("grad" in a for a in nodes.values())


def test_names_with_quotes_and_backslashes_are_escaped():
    key_name = 'a "b" \\n c'
    drawing = viz.graph(lambda d: d[key_name] * d[key_name], {key_name: 3.0})
    nodes, edges = parse_dot(drawing.dot)
    expected = "d" + jax.tree_util.keystr((jax.tree_util.DictKey(key_name),))
    assert nodes["n0"]["name"] == expected and nodes["n0"]["label"].startswith(expected + "\n")
    assert nodes["n1"]["grad"] == "1" and nodes["n0"]["grad"] == "6"  # fan-out: 2 x
    assert edges == [("n0", "n1", 0), ("n0", "n1", 1)]
    if HAS_DOT:  # and Graphviz reads it
        subprocess.run(
            ["dot", "-Tsvg"], input=drawing.dot, text=True, check=True, capture_output=True
        )


# ----------------------------------------------------------------------------- rendering


@NEEDS_DOT
def test_render_draws_svg_and_png_with_graphviz(tmp_path):
    drawing = viz.graph(circuit, -2.0, 5.0, -4.0)
    svg = html.unescape(drawing.render(tmp_path / "circuit.svg").read_text())
    assert "<svg" in svg and "value -12" in svg and "grad -4" in svg
    assert drawing.render(tmp_path / "circuit.png").read_bytes().startswith(PNG_MAGIC)


def test_render_writes_dot_and_names_what_is_missing(tmp_path, monkeypatch):
    drawing = viz.graph(circuit, -2.0, 5.0, -4.0)
    assert drawing.render(tmp_path / "circuit.dot").read_text() == drawing.dot
    with pytest.raises(ValueError, match=r"\.txt.*expected a file ending in \.dot"):
        drawing.render(tmp_path / "circuit.txt")
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    with pytest.raises(viz.GraphvizError, match="apt-get install graphviz"):
        drawing.render(tmp_path / "circuit.svg")
    assert not (tmp_path / "circuit.svg").exists()
    assert viz.GraphvizError is errors.GraphvizError
    assert issubclass(viz.GraphvizError, errors.FmlpError)


# ----------------------------------------------------------------------------- fmlp graph

CLI_CASES = {
    "circuit": ["graph", "--circuit"],
    "config": ["graph", CLASSIFICATION, "--batch", "3"],
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each case of ``python -m fmlp`` run once, both at a time, as a user runs it."""
    env = os.environ | {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }

    def run(name: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fmlp", *CLI_CASES[name]]
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CLI_CASES, pool.map(run, CLI_CASES)))


def test_fmlp_graph_circuit_prints_the_lecture_numbers(cli_runs):
    result = cli_runs["circuit"]
    assert result.returncode == 0, result.stderr
    check_circuit(result.stdout)


def test_fmlp_graph_draws_a_config_model_on_a_small_batch(cli_runs):
    result = cli_runs["config"]
    assert result.returncode == 0, result.stderr
    nodes, edges = parse_dot(result.stdout)
    order = gate_order(nodes)
    assert order[:5] == ["matmul", "add", "tanh", "matmul", "add"], order
    assert order[-2:] == ["softmax_cross_entropy", "mean"], order
    named = by_name(nodes)
    # lecture_classification: 2 features, hidden [32], 3 classes; --batch 3.
    assert named["x"]["dims"] == "(3, 2)" and named["t"]["dims"] == "(3,)"
    assert named["params[0]['W']"]["dims"] == "(2, 32)"
    assert named["params[1]['b']"]["dims"] == "(3,)" and "grad" in named["params[1]['b']"]
    assert named["t"]["kind"] == "constant"
    assert (named["t"]["id"], named["CrEnt"]["id"], 1) in edges


def test_fmlp_graph_bad_config_exits_2_with_one_line(capsys):
    assert cli.main(["graph", CLASSIFICATION, "model.hidden=oops"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmlp graph: error: "), err
    assert "model.hidden" in lines[0] and out == ""


def test_fmlp_graph_without_graphviz_exits_1_saying_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    assert cli.main(["graph", "--circuit", "--out", str(tmp_path / "circuit.svg")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fmlp graph: error: ") and "apt-get install graphviz" in err
    assert not (tmp_path / "circuit.svg").exists()


@pytest.mark.parametrize(
    "args",
    [[], ["--circuit", CLASSIFICATION], ["--circuit", "--out", "graph.txt"]],
    ids=["neither", "both", "suffix"],
)
def test_fmlp_graph_usage_errors_exit_2(args, capsys):
    assert cli.main(["graph", *args]) == 2
    assert capsys.readouterr().err.startswith("fmlp graph: error: ")


@pytest.mark.parametrize("suffix", [".dot", pytest.param(".svg", marks=NEEDS_DOT)])
def test_fmlp_graph_out_writes_the_file(tmp_path, capsys, suffix):
    out = tmp_path / f"circuit{suffix}"
    assert cli.main(["graph", "--circuit", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = html.unescape(out.read_text())  # Graphviz writes "-" as &#45; in SVG
    if suffix == ".dot":
        check_circuit(text)
    else:
        assert "<svg" in text and "value -12" in text


# ----------------------------------------------------------------------------- training plots


def test_training_plots_still_write_pngs(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5},
        {"epoch": 2, "train_loss": 0.5, "val_loss": None, "val_accuracy": 0.7},
    ]
    paths = viz.training_curves(history, tmp_path, metric="accuracy")
    assert [p.name for p in paths] == ["loss.png", "accuracy.png"]
    confusion = viz.confusion_matrix(np.array([[3, 1], [0, 4]]), tmp_path / "confusion.png")
    for path in [*paths, confusion]:
        assert path.read_bytes().startswith(PNG_MAGIC), path
