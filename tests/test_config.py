"""One source for each fact: every preset composes and builds, code defaults equal conf/'s, env ids read the presets."""

from __future__ import annotations

import inspect

import gymnasium
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import glimpse  # noqa: F401  registers glimpse/*-v0
from glimpse.config import CONF_DIR, choices, compose_config
from glimpse.env import REGISTERED, GlimpseEnv
from glimpse.errors import ConfigError, UserError
from glimpse.models import MODELS, build_model
from glimpse.models.dram import DRAM
from glimpse.models.draw import DRAW
from glimpse.models.ram import RAM
from glimpse.models.reference import CNN, FC
from glimpse.models.soft import SoftAttention
from glimpse.sensor import Sensor
from tests.conftest import data_root, needs_mnist

CLASSES = {"ram": RAM, "soft": SoftAttention, "dram": DRAM, "draw": DRAW, "fc": FC, "cnn": CNN}
NATIVE = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32)}  # (channels, side) of each source
GLIMPSE_MODELS = ("ram", "soft", "dram", "draw")
SMALL = [f"data.root={data_root()}", "data.train_limit=500", "data.eval_limit=200"]


def composed(*overrides: str) -> DictConfig:
    """`python -m glimpse.train <overrides>`'s config with Hydra's own part (choices, sweeper)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def first_job(preset: str) -> list[str]:
    """The overrides of a preset's first run: a sweep preset's first value of every swept key."""
    params = composed(f"experiment={preset}").hydra.sweeper.params or {}
    return [f"experiment={preset}"] + [f"{key}={str(values).split(',')[0].strip()}" for key, values in params.items()]


def image_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """What GlimpseData serves for `cfg.data`, read from the config alone: the source's channels, the canvas side."""
    channels, side = NATIVE[cfg.data.source]
    side = cfg.data.canvas or side
    return channels, side, side


def glimpse_model_presets() -> list[str]:
    """The single-run presets of the models that read glimpses (ram_*, soft_*, dram_*, draw_*)."""
    return [p for p in choices("experiment") if p.split("_")[0] in GLIMPSE_MODELS]


@pytest.mark.parametrize("overrides", [[]] + [first_job(p) for p in choices("experiment")],
                         ids=["default"] + choices("experiment"))
def test_every_preset_and_the_default_compose_and_build_their_model(overrides):
    cfg = compose_config(overrides)  # validated, as training checks it
    shape = image_shape(cfg)
    model = build_model(cfg, shape, 10)
    episode = model(torch.rand(2, *shape), generator=torch.Generator().manual_seed(0))
    assert episode.logits.shape == (2, 10)


def test_a_sweep_preset_is_composed_through_its_first_job():
    assert first_job("paper_table") == ["experiment=paper_table", "+experiment@_global_=ram_mnist", "seed=0"]
    assert first_job("cifar10_table") == ["experiment=cifar10_table", "model=ram", "seed=0"]
    assert first_job("ram_mnist") == ["experiment=ram_mnist"]


@pytest.mark.parametrize("preset", glimpse_model_presets())
def test_each_glimpse_preset_reads_its_canvas_through_the_retina_of_its_size(preset):
    cfg = composed(f"experiment={preset}")
    canvas = cfg.data.canvas
    assert cfg.hydra.runtime.choices.sensor == (f"canvas{canvas}" if canvas else "mnist")


def test_swapping_a_presets_data_keeps_its_retina():
    """The Fashion-MNIST canvas as a composition: the preset's 60x60 retina stays, not the default 28x28 one."""
    mine = compose_config(["experiment=ram_cluttered60", "data=fashion_mnist", "data.canvas=60", "data.distractors=4"])
    preset = compose_config(["experiment=ram_cluttered_fashion60"])
    assert mine.sensor == compose_config(["experiment=ram_cluttered60"]).sensor == preset.sensor
    assert mine.sensor != compose_config(["data=fashion_mnist"]).sensor
    mine.data.name = preset.data.name  # the one difference: the preset's data has a name of its own
    assert mine == preset


@pytest.mark.parametrize("model", ["ram", "soft", "dram", "draw", "cnn"])
def test_the_fashion_presets_are_the_cluttered60_presets_on_fashion_mnist(model):
    fashion = OmegaConf.to_container(compose_config([f"experiment={model}_cluttered_fashion60"]))
    mnist = OmegaConf.to_container(compose_config([f"experiment={model}_cluttered60"]))
    assert fashion["data"]["source"] == "fashion_mnist" and fashion["data"]["name"] == "cluttered_fashion_mnist60"
    for key in ("source", "name"):
        del fashion["data"][key], mnist["data"][key]
    assert fashion == mnist


def test_the_sensor_group_names_its_options_and_keys():
    assert {"mnist", "canvas60", "canvas100"} <= set(choices("sensor"))
    assert compose_config(["sensor=canvas100"]).sensor.scales == 4
    with pytest.raises(ConfigError, match="sensor='canvas70'; allowed: .*canvas60"):
        compose_config(["sensor=canvas70"])
    with pytest.raises(UserError, match="unknown key sensor.fovea; known keys under sensor: patch, resize, scale_f"):
        compose_config(["+sensor.fovea=3"])


def keyword_defaults(cls: type) -> dict:
    """The constructor's keyword defaults, tuples as lists (as yaml writes them)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: list(p.default) if isinstance(p.default, tuple) else p.default
            for p in params if p.default is not inspect.Parameter.empty}


def conf(path: str) -> dict:
    return yaml.safe_load((CONF_DIR / path).read_text())


def test_every_model_is_checked():
    assert set(CLASSES) == set(MODELS) == set(choices("model"))


@pytest.mark.parametrize("name", MODELS)
def test_model_constructor_defaults_equal_the_model_config(name):
    """A model built in code without arguments is the one `model=<name>` trains, for the keys both have."""
    code, yaml_ = keyword_defaults(CLASSES[name]), conf(f"model/{name}.yaml")
    shared = sorted(set(code) & set(yaml_))
    assert shared  # the comparison compares something
    assert {k: code[k] for k in shared} == {k: yaml_[k] for k in shared}


@pytest.mark.parametrize("cls", [Sensor, RAM, SoftAttention, DRAM])
def test_retina_defaults_in_code_equal_the_default_sensor_config(cls):
    code, sensor = keyword_defaults(cls), conf("sensor/mnist.yaml")
    shared = sorted(set(code) & set(sensor))
    assert {"patch", "scales", "scale_factor"} <= set(shared)
    assert {k: code[k] for k in shared} == {k: sensor[k] for k in shared}


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_id_names_a_glimpse_preset(name):
    kwargs = gymnasium.spec(f"glimpse/{name}-v0").kwargs
    assert kwargs == REGISTERED[name] and kwargs["experiment"] in glimpse_model_presets()
    if "data" in kwargs:
        assert kwargs["data"] in choices("data")


@needs_mnist
@pytest.mark.parametrize("name", ["MNIST", "TranslatedMNIST", "ClutteredMNIST60", "ClutteredMNIST100",
                                  pytest.param("ClutteredFashionMNIST60", marks=pytest.mark.skipif(
                                      not (data_root() / "FashionMNIST" / "raw").is_dir(),
                                      reason="FashionMNIST not found under GLIMPSE_DATA"))])
def test_an_env_made_from_an_id_has_its_presets_data_glimpses_and_retina(name):
    env = gymnasium.make(f"glimpse/{name}-v0", overrides=SMALL).unwrapped
    preset = compose_config([f"experiment={REGISTERED[name]['experiment']}"])
    s = preset.sensor
    assert env.glimpses == preset.model.glimpses and env.config.data.name == preset.data.name
    assert env.config.sensor == s
    assert env.observation_space["glimpse"].shape == (s.scales, 1, s.patch, s.patch)
    # what the user gives replaces the preset's value
    assert gymnasium.make(f"glimpse/{name}-v0", overrides=SMALL, glimpses=3).unwrapped.glimpses == 3


def test_an_env_refuses_a_preset_without_glimpses():
    with pytest.raises(ValueError, match="trains fc, which reads no glimpses"):
        GlimpseEnv(experiment="fc_mnist")


def test_one_list_of_result_neutral_keys_serves_resume_hparams_and_comparison():
    from glimpse import compare
    from glimpse.config import RESULT_NEUTRAL_KEYS, flatten
    from glimpse.visual import flatten_config

    cfg = compose_config([])
    assert RESULT_NEUTRAL_KEYS <= flatten(cfg).keys()  # each names a key the config has
    assert not RESULT_NEUTRAL_KEYS & flatten_config(cfg).keys()  # HParams leave them out
    assert compare.IGNORED_KEYS == RESULT_NEUTRAL_KEYS | {"seed", "device"}  # seeds are replicates, not settings
