from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from fsar.config import ConfigError, dump_yaml, from_dict, load_yaml, parse_overrides, resolve


@dataclass
class Inner:
    gamma: float = 0.1


@dataclass
class Job:
    out: Path
    steps: int = 10
    lr: float = 1e-3
    scales: tuple[int, ...] = (1, 2, 4)
    mode: Literal["train", "eval"] = "eval"
    backbone: str | None = None
    inner: Inner = field(default_factory=Inner)
    knobs: dict[str, dict] = field(default_factory=dict)


def test_priority_defaults_file_flags_overrides(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("out: /tmp/a\nsteps: 5\nlr: 0.5\n")
    cfg = resolve(Job, file=f, flags={"steps": 7, "lr": None}, overrides=["scales=[1, 2]", "inner.gamma=0.05"])
    assert cfg == Job(out=Path("/tmp/a"), steps=7, lr=0.5, scales=(1, 2), inner=Inner(0.05))


def test_unknown_keys_are_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stpes'\].*valid keys: .*'steps'"):
        from_dict(Job, {"out": "x", "stpes": 3})
    with pytest.raises(ConfigError, match=r"config.inner: unknown key\(s\) \['gama'\]"):
        from_dict(Job, {"out": "x", "inner": {"gama": 1}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"out": "x", "steps": "ten"}, "steps: expected an integer"),
        ({"out": "x", "steps": 2.5}, "steps: expected an integer"),
        ({"out": "x", "lr": True}, "lr: expected a number"),
        ({"out": "x", "lr": "fast"}, "lr: expected a number"),
        ({"out": "x", "mode": "test"}, "is not one of"),
        ({"out": "x", "scales": 4}, "expected a list"),
        ({}, "out"),
    ],
)
def test_ill_typed_values(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Job, data)


def test_int_promotes_to_float_and_optional_accepts_none():
    cfg = from_dict(Job, {"out": "x", "lr": 1, "backbone": None})
    assert isinstance(cfg.lr, float) and cfg.backbone is None


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 reads lr=3e-3 as the string "3e-3"; users write it that way.
    assert from_dict(Job, {"out": "x", **parse_overrides(["lr=3e-3"])}).lr == pytest.approx(0.003)


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a=1", "b=[1, 2]", "c.d=x", "e=true", "f-g=0.5"]) == {
        "a": 1, "b": [1, 2], "c": {"d": "x"}, "e": True, "f_g": 0.5,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_yaml_round_trip_and_bad_files(tmp_path):
    cfg = from_dict(Job, {"out": "x", "scales": [1]})
    dump_yaml(cfg, tmp_path / "c.yaml")
    assert from_dict(Job, load_yaml(tmp_path / "c.yaml")) == cfg
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "evil.yaml").write_text("out: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(Exception, match="could not determine a constructor"):
        load_yaml(tmp_path / "evil.yaml")


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path):
    from fsar.config import load_yaml

    bad = tmp_path / "train.yaml"
    bad.write_text("steps: 10\nknobs: [1\n")
    with pytest.raises(ConfigError, match=f"config file {bad} is not valid YAML at line 3"):
        load_yaml(bad)


def test_an_override_that_is_not_yaml_says_how_to_write_it():
    from fsar.config import parse_overrides

    with pytest.raises(ConfigError, match="override 'knobs.x=\\[8': '\\[8' is not a YAML value.*lists are \\[a, b\\]"):
        parse_overrides(["knobs.x=[8"])


def test_a_missing_data_section_names_the_flags(tmp_path):
    from fsar.training.config import TrainConfig

    with pytest.raises(ConfigError, match="missing required key\\(s\\) \\['data'\\].*--store STORE.*--manifest"):
        from_dict(TrainConfig, {"method": "otam", "out": str(tmp_path)})
