"""Config schema, YAML loading, overrides, validation: errors name key, expectation, value."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from fmlp.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load,
    resolve,
    save,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def with_overrides(*overrides: str) -> Config:
    return from_dict(apply_overrides({}, overrides))


def schema_keys(cls: type) -> dict[str, object]:
    """The full key tree of a config dataclass, as nested dicts (leaves are None)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        sub = cls.__dataclass_fields__[f.name].default_factory
        out[f.name] = schema_keys(sub) if dataclasses.is_dataclass(sub) else None
    return out


def key_tree(d: dict) -> dict[str, object]:
    return {k: key_tree(v) if isinstance(v, dict) else None for k, v in d.items()}


def test_defaults_are_valid():
    cfg = Config()
    assert cfg == from_dict({})
    assert cfg.model.hidden == [100]
    assert cfg.optimizer.learning_rate == 0.05
    assert cfg.train.batch_size == 128
    assert cfg.data.path is None


def test_shipped_configs_are_all_there():
    names = {p.stem for p in SHIPPED}
    assert {"fashion_mnist", "digits", "lecture_regression", "lecture_classification"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads_and_is_complete(path):
    cfg = load(path)
    raw = yaml.safe_load(path.read_text())
    assert key_tree(raw) == schema_keys(Config), "a shipped config should list every key"
    assert path.stem.startswith(cfg.data.name), "a config is named after its data set"


def test_fashion_mnist_config_is_the_main_job():
    cfg = load(CONFIGS / "fashion_mnist.yaml")
    assert cfg.model == ModelConfig(
        hidden=[256, 256], activation="relu", output="softmax", init="he_uniform"
    )
    assert (cfg.optimizer.name, cfg.optimizer.learning_rate) == ("sgd", 0.05)
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, True)
    assert cfg.optimizer.schedule == "cosine"
    assert (cfg.train.epochs, cfg.train.batch_size) == (20, 128)


def test_the_best_fashion_mnist_config_uses_the_building_blocks():
    cfg = load(CONFIGS / "fashion_mnist_best.yaml")
    m = cfg.model
    assert m.hidden == [1024, 1024, 1024] and (m.layer_norm, m.residual) == (True, True)
    assert m.dropout == 0.3 and m.loss == "cross_entropy"
    assert cfg.optimizer.schedule == "cosine" and cfg.train.epochs == 40
    assert cfg.data.validation_fraction == 0.0  # all 60,000 training images


def test_round_trip(tmp_path):
    cfg = with_overrides(
        "model.hidden=[8, 4]",
        "optimizer.learning_rate=1e-3",
        "optimizer.clip_norm=1.5",
        "data.subset=100",
        "run.name=trial",
    )
    save(cfg, tmp_path / "config.yaml")
    assert load(tmp_path / "config.yaml") == cfg
    assert from_dict(to_dict(cfg)) == cfg
    assert yaml.safe_load(yaml.safe_dump(to_dict(cfg))) == to_dict(cfg)


def test_overrides_of_each_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  path: /somewhere\n")
    cfg = load(
        path,
        [
            "train.epochs=3",
            "optimizer.learning_rate=0.01",
            "optimizer.nesterov=true",
            "model.hidden=[256,256]",
            "data.path=null",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.optimizer.learning_rate == 0.01
    assert cfg.optimizer.nesterov is True
    assert cfg.model.hidden == [256, 256]
    assert cfg.data.path is None


def test_empty_hidden_means_no_hidden_layer():
    assert with_overrides("model.hidden=[]").model.hidden == []


def test_exponent_without_dot_is_a_float():
    # PyYAML alone reads 1e-3 as a string.
    assert with_overrides("optimizer.learning_rate=1e-3").optimizer.learning_rate == 0.001


def test_int_accepted_for_float_field():
    cfg = with_overrides("optimizer.learning_rate=1", "optimizer.weight_decay=0")
    assert cfg.optimizer.learning_rate == 1.0
    assert isinstance(cfg.optimizer.learning_rate, float)
    assert isinstance(cfg.optimizer.weight_decay, float)


def test_apply_overrides_does_not_modify_input():
    raw = {"train": {"epochs": 5}}
    out = apply_overrides(raw, ["train.epochs=7", "model.hidden=[3]"])
    assert raw == {"train": {"epochs": 5}}
    assert out == {"train": {"epochs": 7}, "model": {"hidden": [3]}}


def test_resolve_accepts_config_mapping_and_path(tmp_path):
    cfg = with_overrides("train.epochs=4")
    save(cfg, tmp_path / "c.yaml")
    assert resolve(cfg) is cfg
    assert resolve(to_dict(cfg)) == cfg
    assert resolve(tmp_path / "c.yaml") == cfg
    assert resolve(str(tmp_path / "c.yaml"), ["train.epochs=5"]).train.epochs == 5
    assert resolve(cfg, ["train.epochs=6"]).train.epochs == 6
    with pytest.raises(ConfigError, match=r"expected a Config, a mapping or a path.*got 42"):
        resolve(42)


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        dataclasses.replace(Config().train, epochs=0)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            "optimizer.learnig_rate=0.1",
            r"unknown key 'optimizer\.learnig_rate' \(did you mean optimizer\.learning_rate\?\)",
        ),
        ("optimzer.learning_rate=0.1", r"unknown section 'optimzer' \(did you mean optimizer\?\)"),
        ("model.hiden=[3]", r"did you mean model\.hidden\?"),
    ],
)
def test_unknown_key_override_suggests_close_match(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides({}, [override])


def test_unknown_key_in_mapping_lists_known_keys():
    with pytest.raises(ConfigError, match=r"'train\.epoch' \(did you mean train\.epochs\?\).*"):
        from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"known keys in train: epochs, batch_size"):
        from_dict({"train": {"zzz": 3}})


def test_unknown_section_in_mapping():
    with pytest.raises(ConfigError, match=r"unknown section 'modle' \(did you mean model\?\)"):
        from_dict({"modle": {}})
    known = r"known sections: model, data, optimizer, train, precision, parallel, distributed, run"
    with pytest.raises(ConfigError, match=known):
        from_dict({"extra": {}})


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs=abc", r"train\.epochs: expected an integer, got 'abc' \(str\)"),
        ("train.epochs=true", r"train\.epochs: expected an integer, got True \(bool\)"),
        ("train.epochs=2.5", r"train\.epochs: expected an integer, got 2\.5 \(float\)"),
        ("optimizer.learning_rate=true", r"optimizer\.learning_rate: expected a number, got True"),
        ("optimizer.learning_rate=.inf", r"optimizer\.learning_rate: expected a finite number"),
        ("optimizer.nesterov=1", r"optimizer\.nesterov: expected a boolean \(true/false\), got 1"),
        ("model.hidden=256", r"model\.hidden: expected a list of integers, got 256 \(int\)"),
        ("model.hidden='256,256'", r"model\.hidden: expected a list of integers, got '256,256'"),
        ("model.hidden=[64, x]", r"model\.hidden\[1\]: expected an integer, got 'x'"),
        ("model.activation=null", r"model\.activation: expected one of tanh, relu, .*, got null$"),
        (
            "run.progress=off",
            r"run\.progress: expected one of auto, always, never, got False \(bool\) "
            r"\(YAML reads yes/no/on/off as true/false; quote a word meant as text\)",
        ),
        ("data.subset=ten", r"data\.subset: expected an integer or null, got 'ten'"),
        ("train=3", r"train: expected a TrainConfig or a mapping, got 3 \(int\)"),
    ],
)
def test_wrong_type(override, match):
    with pytest.raises(ConfigError, match=match):
        with_overrides(override)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optimizer.learning_rate=-1", r"optimizer\.learning_rate: expected a number > 0, got -1"),
        ("optimizer.learning_rate=0", r"optimizer\.learning_rate: expected a number > 0"),
        ("data.validation_fraction=1.0", r"data\.validation_fraction: .* in \[0, 1\), got 1\.0"),
        ("optimizer.momentum=1", r"optimizer\.momentum: expected a number in \[0, 1\)"),
        ("optimizer.decay_rate=0", r"optimizer\.decay_rate: expected a number in \(0, 1\]"),
        ("optimizer.clip_norm=0", r"optimizer\.clip_norm: expected a number > 0"),
        ("train.epochs=0", r"train\.epochs: expected an integer >= 1, got 0"),
        ("train.unroll=0", r"train\.unroll: expected an integer >= 1, got 0"),
        ("data.synthetic_examples=5", r"data\.synthetic_examples: expected an integer >= 10"),
        ("model.hidden=[8, 0]", r"model\.hidden\[1\]: expected an integer >= 1, got 0"),
    ],
)
def test_out_of_range(override, match):
    with pytest.raises(ConfigError, match=match):
        with_overrides(override)


def test_unknown_choice_lists_allowed_values():
    allowed = r"expected one of tanh, relu, sigmoid, leaky_relu, identity, gelu, .*; got 'swish'"
    with pytest.raises(ConfigError, match=r"model\.activation: " + allowed):
        with_overrides("model.activation=swish")
    with pytest.raises(ConfigError, match=r"optimizer\.name: .*got 'adan' \(did you mean adam\?\)"):
        with_overrides("optimizer.name=adan")


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train..epochs=3", ".epochs=3", ""])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match=r"malformed override .*section\.key=value"):
        apply_overrides({}, [override])


def test_override_into_a_value_is_malformed():
    with pytest.raises(ConfigError, match=r"train\.epochs is a value, not a section"):
        apply_overrides({}, ["train.epochs.max=3"])


def test_override_value_that_is_not_yaml():
    with pytest.raises(ConfigError, match=r"override 'model\.hidden=\[1,'.*not valid YAML"):
        apply_overrides({}, ["model.hidden=[1,"])


def test_overrides_must_be_a_sequence_of_strings():
    with pytest.raises(ConfigError, match=r"overrides: expected a sequence"):
        apply_overrides({}, "train.epochs=3")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml' not found"):
        load(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hidden: [64]\n  activation: tanh: relu\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML: line 3, column 19"):
        load(path)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  epochs: 3\ntrain:\n  batch_size: 8\n")
    with pytest.raises(
        ConfigError, match=r"dup\.yaml: invalid YAML: line 3.*duplicate key 'train'"
    ):
        load(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"expected a mapping of sections .* got \[1, 2\]"):
        load(path)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_an_empty_config_file_is_called_empty(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"empty\.yaml: the file is empty; expected a mapping"):
        load(path)


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"train: expected a TrainConfig or a mapping, got null"):
        from_dict({"train": None})


def test_warmup_must_be_shorter_than_training():
    with pytest.raises(
        ConfigError, match=r"optimizer\.warmup_epochs must be < train\.epochs.*=5 and .*=5"
    ):
        with_overrides(
            "optimizer.schedule=warmup_cosine", "optimizer.warmup_epochs=5", "train.epochs=5"
        )
    cfg = with_overrides(
        "optimizer.schedule=warmup_cosine", "optimizer.warmup_epochs=4", "train.epochs=5"
    )
    assert cfg.optimizer.warmup_epochs == 4
    # Only the warmup schedule uses warmup_epochs.
    assert with_overrides("optimizer.warmup_epochs=9", "train.epochs=5").train.epochs == 5


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ["model.output=identity"],
            r"model\.loss='squared_error' \(model\.output='identity'\) is a regression head "
            r"but data\.name='fashion_mnist' is a classification set; expected "
            r"model\.loss=cross_entropy for this data",
        ),
        (["model.output=identity", "data.name=digits"], r"data\.name='digits'"),
        (["data.name=lecture_classification", "model.output=identity"], r"model\.output"),
        (
            ["data.name=lecture_regression"],
            r"model\.loss='cross_entropy' \(model\.output='softmax'\) is a classification head "
            r"but data\.name='lecture_regression' is a regression set; expected "
            r"model\.loss=squared_error or huber or absolute_error",
        ),
        (["model.loss=huber"], r"model\.loss='huber' .* is a regression head"),
        (["model.loss=binary_cross_entropy"], r"model\.loss='binary_cross_entropy' .* multilabel"),
        (["data.name=lecture_multilabel"], r"data\.name='lecture_multilabel' is a multilabel set"),
    ],
)
def test_output_head_must_fit_the_data(overrides, match):
    with pytest.raises(ConfigError, match=match):
        with_overrides(*overrides)


def test_regression_head_on_regression_data_is_valid():
    cfg = with_overrides("data.name=lecture_regression", "model.output=identity")
    assert cfg.model.output == "identity"


def test_choices_are_derived_from_the_tables_they_name(monkeypatch):
    from fmlp import data, gates, nn

    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert list(fields["activation"].metadata["choices"]) == list(nn.ACTIVATIONS)
    assert list(fields["init"].metadata["choices"]) == list(nn.INITIALIZERS)
    assert list(fields["output"].metadata["choices"]) == list(nn.OUTPUTS)
    assert list(fields["loss"].metadata["choices"]) == list(nn.HEADS)
    data_fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    assert list(data_fields["name"].metadata["choices"]) == list(data.DATASETS)
    with pytest.raises(ConfigError, match=r"model\.activation: expected one of"):
        from_dict({"model": {"activation": "softsign"}})
    monkeypatch.setitem(nn.ACTIVATIONS, "softsign", gates.tanh)  # a table entry added later
    assert from_dict({"model": {"activation": "softsign"}}).model.activation == "softsign"


# ----------------------------------------------------------------------------- building blocks


def test_model_output_and_loss_name_one_head():
    assert (Config().model.output, Config().model.loss) == ("softmax", "cross_entropy")
    for overrides, head in [
        (["model.output=identity"], ("identity", "squared_error")),
        (["model.loss=huber"], ("identity", "huber")),
        (["model.loss=absolute_error", "model.output=identity"], ("identity", "absolute_error")),
    ]:
        cfg = with_overrides("data.name=lecture_regression", *overrides)
        assert (cfg.model.output, cfg.model.loss) == head
    cfg = with_overrides("data.name=lecture_multilabel", "model.output=sigmoid")
    assert cfg.model.loss == "binary_cross_entropy"
    # The resolved config names both, and reads back to itself.
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.loss=hinge"], r"model\.loss: expected one of cross_entropy, .*; got 'hinge'"),
        (["model.output=tanh"], r"model\.output: expected one of softmax, sigmoid, identity"),
        (
            ["model.loss=huber", "model.output=softmax"],
            r"model\.output: 'softmax' does not fit loss 'huber', whose head's output is "
            r"'identity'",
        ),
        (["model.dropout=1.0"], r"model\.dropout: expected a number in \[0, 1\), got 1\.0"),
        (["model.dropout=-0.1"], r"model\.dropout: expected a number in \[0, 1\)"),
        (["model.dropout=[0.1, 1.5]", "model.hidden=[4, 4]"], r"model\.dropout\[1\]: .*\[0, 1\)"),
        (["model.dropout=high"], r"model\.dropout: expected a number or a list of numbers"),
        (
            ["model.dropout=[0.1, 0.2, 0.3]", "model.hidden=[4, 4]"],
            r"model\.dropout: a list needs one entry per hidden layer \(2\), got 3",
        ),
        (
            ["model.activation=[relu]", "model.hidden=[4, 4]"],
            r"model\.activation: a list needs one entry per hidden layer \(2\), got 1",
        ),
        (["model.activation=[relu, swish]", "model.hidden=[4, 4]"], r"model\.activation\[1\]"),
        (["model.layer_norm=yes please"], r"model\.layer_norm: expected a boolean"),
        (
            ["model.residual=true", "model.hidden=[8, 4]"],
            r"model\.residual: no hidden layer has the width of the hidden layer before it",
        ),
        (["model.label_smoothing=1"], r"model\.label_smoothing: expected a number in \[0, 1\)"),
        (
            ["model.label_smoothing=0.1", "model.loss=huber", "data.name=lecture_regression"],
            r"model\.label_smoothing: smooths class targets, but loss 'huber' is a regression",
        ),
        (["data.class_weight=even"], r"data\.class_weight: expected one of balanced; got 'even'"),
        (["data.class_weight=[1.0, 0]"], r"data\.class_weight\[1\]: expected a number > 0"),
        (["data.class_weight=[1.0, x]"], r"data\.class_weight\[1\]: expected a number, got 'x'"),
        (
            ["data.class_weight=balanced", "model.loss=huber", "data.name=lecture_regression"],
            r"data\.class_weight: weighs the classes of a cross_entropy head, but "
            r"model\.loss='huber'",
        ),
    ],
)
def test_a_bad_building_block_names_its_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        with_overrides(*overrides)


def test_building_blocks_take_a_value_or_one_per_hidden_layer(tmp_path):
    cfg = with_overrides(
        "model.hidden=[16, 16, 8]",
        "model.activation=[gelu, silu, elu]",
        "model.dropout=[0.5, 0.2, 0.0]",
        "model.layer_norm=true",
        "model.residual=true",
        "model.label_smoothing=0.1",
        "data.class_weight=[1.0, 2.0, 0.5]",
    )
    m = cfg.model
    assert (m.activation, m.dropout) == (["gelu", "silu", "elu"], [0.5, 0.2, 0.0])
    assert (m.layer_norm, m.residual, m.label_smoothing) == (True, True, 0.1)
    assert cfg.data.class_weight == [1.0, 2.0, 0.5]
    assert with_overrides("model.dropout=0").model.dropout == 0.0  # a float, as declared
    assert with_overrides("data.class_weight=balanced").data.class_weight == "balanced"
    save(cfg, tmp_path / "config.yaml")
    assert load(tmp_path / "config.yaml") == cfg
