"""Search space files: names resolved to knobs or training settings, distributions parsed, and every
unknown name or impossible range refused with a message that says what is valid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from fsar.config import ConfigError
from fsar.search_space import Distribution, SearchSpace, load_search_space, parse_distribution, plain


def space(**kw):
    data = {"method": "otam", "fixed": {"steps": 40, "proj_dim": 16},
            "space": {"lr": {"loguniform": [1e-4, 1e-2]}, "gamma": {"choice": [0.01, 0.1]}}}
    return SearchSpace(**(data | kw))


def test_names_go_to_knobs_or_training_settings():
    s = space(space={"lr": {"loguniform": [1e-4, 1e-2]}, "gamma": {"choice": [0.01, 0.1]},
                     "temporal_centre": {"choice": [True, False]}, "weight_decay": {"uniform": [0.0, 0.1]}})
    assert s.target("gamma") == "knob" and s.target("lr") == "train" and s.target("proj_dim") == "knob"
    config = s.train_config({"lr": np.float64(3e-3), "gamma": 0.1, "temporal_centre": True, "weight_decay": 0.05},
                            source="/s", out="/o", use_gpu=False)
    assert config.lr == 3e-3 and type(config.lr) is float and config.steps == 40 and config.method == "otam"
    assert config.knobs == {"proj_dim": 16, "gamma": 0.1, "temporal_centre": True}
    assert str(config.data.store) == "/s" and config.use_gpu is False


def test_distributions_and_probes():
    log = parse_distribution("lr", {"loguniform": [1e-4, 1e-2]})
    assert log == Distribution("loguniform", (1e-4, 1e-2)) and log.log
    assert log.probes()[:2] == [1e-4, 1e-2] and math.isclose(log.probes()[2], 1e-3)
    uni = parse_distribution("x", {"uniform": [0, 1]})
    assert uni.probes() == [0.0, 1.0, 0.5] and uni.describe() == "uniform[0.0, 1.0]"
    choice = parse_distribution("scales", {"choice": [[1], [1, 2]]})
    assert choice.probes() == [[1], [1, 2]] and choice.to_dict() == {"choice": [[1], [1, 2]]}


@pytest.mark.parametrize(("spec", "message"), [
    ({"uniform": [1.0, 1.0]}, "is empty: low must be below high"),
    ({"uniform": [2.0, 1.0]}, "is empty"),
    ({"loguniform": [0.0, 1.0]}, "loguniform needs 0 < low < high"),
    ({"uniform": [0, "a"]}, "takes \\[low, high\\] \\(two numbers\\)"),
    ({"uniform": [0, 1, 2]}, "takes \\[low, high\\]"),
    ({"normal": [0, 1]}, "unknown distribution 'normal'"),
    ({"choice": []}, "at least one value"),
    (0.1, "a value every trial shares goes under 'fixed'"),
    ({"uniform": [0, 1], "choice": [1]}, "expected one of"),
])
def test_malformed_distributions_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_distribution("lr", spec)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown parameter 'gama' for method otam") as err:
        space(space={"gama": {"choice": [0.1]}})
    assert "'gamma'" in str(err.value) and "'lr'" in str(err.value) and "'weight_decay'" in str(err.value)
    with pytest.raises(ConfigError, match="unknown parameter 'ot_epsilon'"):
        space(fixed={"ot_epsilon": 0.1})
    with pytest.raises(ConfigError, match="'workers' is set by the sweep itself"):
        space(fixed={"workers": 2})
    with pytest.raises(ConfigError, match="'store' is set by the sweep itself"):
        space(space={"store": {"choice": ["/x"]}})
    with pytest.raises(ConfigError, match="unknown method 'otm'"):
        space(method="otm")


def test_ranges_the_method_or_trainer_cannot_take_are_refused():
    with pytest.raises(ConfigError, match="space.gamma: uniform.* would give -1.0.*gamma must be >= 0"):
        space(space={"gamma": {"uniform": [-1.0, 1.0]}})
    with pytest.raises(ConfigError, match="space.temperature: .*would give 0.0"):
        space(space={"temperature": {"uniform": [0.0, 1.0]}})
    with pytest.raises(ConfigError, match="space.proj_dim: .*expected an integer.*use choice"):
        space(fixed={}, space={"proj_dim": {"uniform": [8, 64]}})
    with pytest.raises(ConfigError, match="space.gamma: .*'high'.*expected a number"):
        space(space={"gamma": {"choice": [0.1, "high"]}})
    with pytest.raises(ConfigError, match="space.lr: .*lr must be > 0"):
        space(space={"lr": {"choice": [0.0, 1e-3]}})
    with pytest.raises(ConfigError, match="fixed: steps must be >= 1"):
        space(fixed={"steps": 0})
    with pytest.raises(ConfigError, match="optimizer.*not one of"):
        space(space={"optimizer": {"choice": ["adamw", "adam"]}})


def test_sweep_level_errors():
    with pytest.raises(ConfigError, match=r"\['gamma'\] both fixed and swept"):
        space(fixed={"gamma": 0.1})
    with pytest.raises(ConfigError, match="trials must be at least 1"):
        space(trials=0)
    with pytest.raises(ConfigError, match="space is empty"):
        space(space={})


def test_file_loading_overrides_and_errors(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"method": "otam", "trials": 6, "fixed": {"steps": 100},
                                    "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}))
    s = load_search_space(path, trials=2, fixed={"steps": 10, "val_every": 5})
    assert s.trials == 2 and s.fixed == {"steps": 10, "val_every": 5}
    assert s.to_dict()["space"] == {"lr": {"loguniform": [1e-4, 1e-2]}}
    assert yaml.safe_load(yaml.safe_dump(s.to_dict())) == s.to_dict()  # YAML-safe
    path.write_text(yaml.safe_dump({"method": "otam", "spaces": {}}))
    with pytest.raises(ConfigError, match=f"search space {path}: .*unknown key.*'spaces'.*valid keys"):
        load_search_space(path)
    path.write_text(yaml.safe_dump({"method": "otam", "space": {"lr": {"uniform": [1e-2, 1e-4]}}}))
    with pytest.raises(ConfigError, match=f"search space {path}: space.lr: uniform range .* is empty"):
        load_search_space(path)


def test_plain_turns_sampler_values_into_python_values():
    assert plain(np.float64(0.5)) == 0.5 and type(plain(np.float64(0.5))) is float
    assert plain(np.int64(3)) == 3 and type(plain(np.int64(3))) is int
    assert plain((np.int64(1), [np.int64(2)])) == [1, [2]]


def test_list_valued_choices_for_a_list_knob():
    """A2M2's scale sets: each option is a list, checked against ``scales: list[int]``."""
    from fsar.methods import list_methods

    if "a2m2" not in list_methods():
        pytest.skip("a2m2 is not registered")
    s = SearchSpace(method="a2m2", space={"scales": {"choice": [[1], [1, 2], [1, 2, 4]]}})
    assert s.train_config({"scales": [1, 2]}, source=".", out=".").knobs == {"scales": [1, 2]}
    with pytest.raises(ConfigError, match="space.scales"):
        SearchSpace(method="a2m2", space={"scales": {"choice": [[1], 2]}})


def test_a_seed_sweeps_over_its_named_configurations():
    from fsar.config import ConfigError
    from fsar.search_space import SearchSpace

    space = SearchSpace(method="a2m2", space={"configuration": {"choice": ["paper", "fsar"]}})
    assert space.target("configuration") == "knob"
    with pytest.raises(ConfigError, match="no configuration 'best'"):
        SearchSpace(method="a2m2", space={"configuration": {"choice": ["paper", "best"]}})
    with pytest.raises(ConfigError, match="unknown parameter 'configuration' for method otam"):
        SearchSpace(method="otam", space={"configuration": {"choice": ["paper"]}})
