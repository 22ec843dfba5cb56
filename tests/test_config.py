"""Strict dataclass configs: every bad key or value fails with a message that names it."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from molscore.config import ConfigError, dump_config, load_config


@dataclass
class Optim:
    learning_rate: float = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Train:
    steps: int
    optim: Optim = field(default_factory=Optim)
    milestones: list[float] = field(default_factory=list)
    ema: float | None = None


@dataclass
class Run:
    name: str
    train: Train
    out: Path = Path("runs")
    extra: dict = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    widths: tuple[int, ...] = (32, 32)
    verbose: bool = False

    def __post_init__(self):
        if self.train.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.train.steps}")


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_load_nested_yaml_with_conversions(tmp_path):
    path = _write(
        tmp_path,
        "name: ala2\n"
        "train:\n"
        "  steps: 10\n"
        "  optim: {learning_rate: 1, betas: [0.5, 0.6]}\n"
        "  milestones: [1, 2.5]\n"
        "  ema: 1e-3\n"  # PyYAML reads 1e-3 as a string: still a float here
        "out: /tmp/x\n"
        "widths: [8, 16, 32]\n"
        "weights: {dsm: 1, fp: 0.1}\n",
    )
    cfg = load_config(path, Run)
    assert cfg.train.optim.learning_rate == 1.0 and isinstance(cfg.train.optim.learning_rate, float)
    assert cfg.train.optim.betas == (0.5, 0.6)
    assert cfg.train.milestones == [1.0, 2.5]
    assert cfg.train.ema == 1e-3
    assert cfg.out == Path("/tmp/x") and cfg.widths == (8, 16, 32)
    assert cfg.weights == {"dsm": 1.0, "fp": 0.1}
    assert cfg.train.optim.schedule == "cosine"


def test_unknown_nested_key_names_dotted_key_file_and_suggestion(tmp_path):
    path = _write(tmp_path, "name: a\ntrain:\n  steps: 1\n  optim:\n    lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, Run)
    msg = str(err.value)
    assert "'train.optim.lerning_rate'" in msg
    assert str(path) in msg
    assert "did you mean 'train.optim.learning_rate'" in msg
    assert "learning_rate, schedule, betas" in msg


def test_unknown_top_level_key_from_dict():
    with pytest.raises(ConfigError, match=r"unknown config key 'nmae'.*did you mean 'name'"):
        load_config({"nmae": "a", "train": {"steps": 1}}, Run)


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"steps": "ten"}, r"'train.steps'.*expected int, got 'ten' \(str\)"),
        ({"steps": 1.5}, r"'train.steps'.*expected int"),
        ({"steps": True}, r"'train.steps'.*expected int"),
        ({"steps": 1, "ema": "fast"}, r"'train.ema'.*expected float, got 'fast'"),
        ({"steps": 1, "milestones": [1, "x"]}, r"'train.milestones\[1\]'.*expected float"),
        ({"steps": 1, "optim": {"betas": [0.9]}}, r"'train.optim.betas'.*expected 2 items"),
        ({"steps": 1, "optim": 3}, r"'train.optim'.*expected a mapping of Optim"),
    ],
)
def test_wrong_type_names_key_expected_and_got(train, match):
    with pytest.raises(ConfigError, match=match):
        load_config({"name": "a", "train": train}, Run)


def test_literal_choices():
    cfg = load_config({"name": "a", "train": {"steps": 1, "optim": {"schedule": "constant"}}}, Run)
    assert cfg.train.optim.schedule == "constant"
    match = r"'train.optim.schedule'.*one of \['cosine', 'constant'\].*did you mean 'cosine'"
    with pytest.raises(ConfigError, match=match):
        load_config({"name": "a", "train": {"steps": 1, "optim": {"schedule": "cosin"}}}, Run)


def test_missing_required_key_and_post_init():
    with pytest.raises(ConfigError, match=r"missing required config key 'train.steps'"):
        load_config({"name": "a", "train": {}}, Run)
    with pytest.raises(ConfigError, match=r"missing required config key 'name'"):
        load_config({"train": {"steps": 1}}, Run)
    with pytest.raises(ConfigError, match=r"train.steps must be >= 1"):
        load_config({"name": "a", "train": {"steps": 0}}, Run)


def test_missing_file_and_non_mapping(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(missing, Run)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"), Run)


def test_dump_load_round_trip(tmp_path):
    cfg = Run(
        name="ala2",
        train=Train(steps=5, optim=Optim(0.01, "constant", (0.8, 0.9)), milestones=[1.0], ema=0.999),
        out=Path("/data/run1"),
        extra={"note": "x", "seeds": [1, 2]},
        weights={"fp": 0.5},
        widths=(4, 8),
        verbose=True,
    )
    path = dump_config(cfg, tmp_path / "sub" / "config.yaml")
    assert path.read_text().startswith("# resolved Run")
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]
    assert load_config(path, Run) == cfg


def test_simulation_start_groups_split_the_replicas_in_order():
    from molscore.pipeline.config import SimulateConfig

    groups = SimulateConfig(replicas=5, start="state:C7eq+data").start_groups()
    assert groups == [("state:C7eq", range(0, 3)), ("data", range(3, 5))]  # the first part takes the remainder
    assert SimulateConfig(replicas=4).start_groups() == [("data", range(0, 4))]
    for bad in ("state:", "data+middle", "frames"):
        with pytest.raises(ValueError, match="simulate.start"):
            SimulateConfig(start=bad)
    with pytest.raises(ValueError, match="more parts than"):
        SimulateConfig(replicas=1, start="first+data")
