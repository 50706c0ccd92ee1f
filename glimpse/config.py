"""Checks a composed config before any work starts: one clear line per mistake (errors.ConfigError)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from glimpse.data import SOURCES
from glimpse.errors import ConfigError, UserError
from glimpse.models import MODELS
from glimpse.models.draw import CENTRES
from glimpse.objectives import BASELINES
from glimpse.sensor import RESIZES

# The repository's conf/, installed as the package glimpse.conf (pyproject.toml): the same folder in editable
# and plain installs.
CONF_DIR = Path(str(files("glimpse.conf")))
GROUPS = ("data", "model", "sensor", "trainer", "experiment")

# Config keys that never change what a finished run computes: a resumed run may change them (train), the
# HParams table leaves them out (visual) and the comparison does not tell settings apart by them (compare).
# Not trainer.eval_batch_size: the sampled policy's draws follow the batches.
RESULT_NEUTRAL_KEYS = frozenset({
    "trainer.resume", "trainer.progress", "trainer.checkpoint_every_minutes", "trainer.visual_every",
    "trainer.visual_images", "trainer.cuda_graph", "trainer.on_nonfinite", "data.root", "data.download",
})
DEVICES, DEVICES_ALLOWED = r"auto|cpu|cuda(:\d+)?|mps", "auto, cpu, cuda, cuda:N, mps"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: {'model': {'glimpses': 6}} -> {'model.glimpses': 6}.

    Takes plain containers or an OmegaConf config (resolved); lists and other leaves stay as they are."""
    if OmegaConf.is_config(tree):
        tree = OmegaConf.to_container(tree, resolve=True)
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def search_path(args: Sequence[str]) -> list[str]:
    """The config folders a `hydra.searchpath=[file://my_conf]` override adds to the package's conf/ ([] if none)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for arg in args:
        if re.match(r"\+{0,2}hydra\.searchpath=", arg):  # Hydra, too, reads the first one only
            try:
                value = OverridesParser.create().parse_override(arg).value()
            except HydraException as err:
                raise UserError(f"invalid override: {arg} ({str(err).strip().splitlines()[0]})") from None
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError("hydra.searchpath", value, "a list of folders, e.g. [file://my_conf]")
            return value
    return []


def config_folders(searchpath: Sequence[str] = ()) -> list[Path]:
    """The folders Hydra reads config groups from, in its order: the package's conf/, then each searchpath entry.

    file://<folder> (relative to the working directory, as Hydra reads it) and pkg://<package>; Hydra only warns
    about a folder that is not there, which would leave the user's presets silently unknown."""
    folders = [CONF_DIR]
    for entry in searchpath:
        scheme, sep, where = entry.partition("://")
        scheme, where = (scheme, where) if sep else ("file", entry)
        if scheme not in ("file", "pkg"):
            continue  # structured:// and plugins' schemes hold no yaml files to list
        try:
            folder = Path(str(files(where.replace("/", ".")))) if scheme == "pkg" else Path(where)
        except (ImportError, TypeError, ValueError):
            folder = None
        if folder is None or not folder.is_dir():
            where = "no installed package" if scheme == "pkg" else f"no folder (seen from {Path.cwd()})"
            raise UserError(f"invalid override: hydra.searchpath entry {entry} names {where}")
        folders.append(folder)
    return folders


def choices(group: str, searchpath: Sequence[str] = ()) -> list[str]:
    """The options of a config group: the yaml files in conf/<group>/ and in each searchpath folder's <group>/."""
    return sorted({p.stem for folder in config_folders(searchpath) for p in (folder / group).glob("*.yaml")})


def option_file(group: str, option: str, searchpath: Sequence[str] = ()) -> Path | None:
    """The yaml file Hydra reads for `group=option`: the first folder's that has one."""
    return next((f / group / f"{option}.yaml" for f in config_folders(searchpath)
                 if (f / group / f"{option}.yaml").is_file()), None)


def check_overrides(args: list[str]) -> None:
    """Refuse an unknown `group=option` on the command line before Hydra composes anything.

    The options are the package's and those of the folders a `hydra.searchpath=[...]` override adds."""
    searchpath = search_path(args)
    users = config_folders(searchpath)[1:]
    for arg in args:
        m = re.fullmatch(rf"\+?({'|'.join(GROUPS)})=(.*)", arg)
        if not m:
            continue
        group, value = m.groups()
        allowed = choices(group, searchpath)
        for option in value.split(","):  # multirun: data=mnist,cluttered_mnist60
            if option and option != "null" and option not in allowed:
                raise ConfigError(group, option, ", ".join(allowed))
            hidden = [f / group / f"{option}.yaml" for f in users if (f / group / f"{option}.yaml").is_file()]
            if hidden and (CONF_DIR / group / f"{option}.yaml").is_file():  # the user's edits would be ignored
                raise UserError(f"invalid config: {hidden[0]} has the name of the package's {group}={option}, which "
                                "Hydra reads instead: rename the file")


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `python -m glimpse.train <overrides>` runs, checked: UserError on any mistake."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        unknown = re.match(r"Could not override '([\w.]+)'", str(err))
        if unknown:  # Hydra would suggest appending it with '+': a key glimpse does not read is a typo, not a setting
            raise unknown_key(unknown.group(1)) from None
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        raise UserError(f"invalid override: {' '.join(lines[:2])}") from None
    validate(cfg)
    return cfg


def unknown_key(key: str) -> UserError:
    section = key.rpartition(".")[0]
    return UserError(f"invalid config: unknown key {key}; known keys{' under ' + section if section else ''}: "
                     f"{', '.join(known_keys(section))}")


def known_keys(section: str) -> list[str]:
    """The keys glimpse reads under `section` ('' for the top level), from the yaml files that define them."""
    import yaml

    groups = [g for g in GROUPS if g != "experiment"]  # a preset only sets the other groups' keys
    group = section.split(".")[0]
    if section == "":
        paths, keys = [CONF_DIR / "config.yaml"], set(groups)
    elif group in groups:
        paths, keys = list(CONF_DIR.glob(f"{group}/*.yaml")), set()
    else:
        paths, keys = [], set()
    for path in paths:
        tree = yaml.safe_load(path.read_text()) or {}
        keys |= {k for k in tree if k not in ("defaults", "hydra")}
    return sorted(keys)


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, DictConfig) else None
    return node


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid value."""

    def positive_int(key: str, optional: bool = False) -> None:
        v = _get(cfg, key)
        if optional and v is None:
            return
        if not (_is_int(v) and v > 0):
            raise ConfigError(key, v, "a positive integer" + (" or null" if optional else ""))

    def one_of(key: str, allowed: tuple[str, ...] | list[str]) -> None:
        v = _get(cfg, key)
        if v not in allowed:
            raise ConfigError(key, v, ", ".join(allowed))

    def boolean(key: str) -> None:
        v = _get(cfg, key)
        if not isinstance(v, bool):
            raise ConfigError(key, v, "true or false")

    for section in ("", "trainer", "sensor", "model", "data"):  # `+trainer.epochz=3` would be read by nothing
        node = cfg if section == "" else cfg.get(section)
        extra = sorted(set(node.keys()) - set(known_keys(section))) if isinstance(node, DictConfig) else []
        if extra:
            raise unknown_key(f"{section}.{extra[0]}".lstrip("."))
    one_of("model.name", MODELS)
    one_of("data.source", tuple(SOURCES))
    for key in ("sensor.patch", "sensor.scales", "trainer.epochs", "trainer.batch_size", "trainer.eval_samples",
                "trainer.eval_batch_size"):
        positive_int(key)
    # Model keys are checked where the chosen model has them (fc has no glimpses, cnn no hidden size).
    model_keys = set(cfg.model.keys())
    for key in ("glimpses", "hidden", "what", "where", "glimpse_out", "stride", "heads", "episodes_per_image"):
        if key in model_keys:
            positive_int(f"model.{key}")
    if "heads" in model_keys and cfg.model.hidden % cfg.model.heads:
        raise ConfigError("model.heads", cfg.model.heads, f"a divisor of model.hidden ({cfg.model.hidden})")
    if "channels" in model_keys and not (len(cfg.model.channels) == 2
                                         and all(_is_int(c) and c > 0 for c in cfg.model.channels)):
        raise ConfigError("model.channels", list(cfg.model.channels), "two positive integers")
    v = _get(cfg, "trainer.lr")
    if not (_is_number(v) and v > 0):
        raise ConfigError("trainer.lr", v, "a number > 0")
    if "std" in model_keys:
        v = _get(cfg, "model.std")
        if not (_is_number(v) and v > 0):
            raise ConfigError("model.std", v, "a number > 0")
    if "std_final" in model_keys:
        v = _get(cfg, "model.std_final")
        if not (v is None or (_is_number(v) and v > 0)):
            raise ConfigError("model.std_final", v, "null or a number > 0")
    for key in ("greedy_fraction", "dropout"):
        v = _get(cfg, f"model.{key}")
        if key in model_keys and not (_is_number(v) and 0 <= v < 1):
            raise ConfigError(f"model.{key}", v, "a number in [0, 1)")
    v = _get(cfg, "sensor.scale_factor")
    if not (_is_number(v) and v >= 1):
        raise ConfigError("sensor.scale_factor", v, "a number >= 1")
    for key in ("reinforce_weight", "baseline_weight"):
        v = _get(cfg, f"model.{key}")
        if key in model_keys and not (_is_number(v) and v >= 0):
            raise ConfigError(f"model.{key}", v, "a number >= 0")
    if "baseline" in model_keys:
        one_of("model.baseline", BASELINES)
        k = cfg.model.get("episodes_per_image", 1)
        if cfg.model.baseline == "episodes" and k < 2:
            raise ConfigError("model.baseline", "episodes", f"learned; episodes needs model.episodes_per_image >= 2, "
                              f"not {k}")
    if "core" in model_keys:
        one_of("model.core", ("rnn", "lstm", "gru"))
    if "centre" in model_keys:
        one_of("model.centre", CENTRES)
    if "eval_start" in model_keys:
        one_of("model.eval_start", ("centre", "random"))
    for key in ("location_grad_to_core", "fused"):
        if key in model_keys:
            boolean(f"model.{key}")
    one_of("sensor.resize", RESIZES)
    one_of("trainer.schedule", ("cosine", "constant"))
    v = _get(cfg, "trainer.clip_grad_norm")
    if v is not None and not (_is_number(v) and v > 0):
        raise ConfigError("trainer.clip_grad_norm", v, "a number > 0 (the largest total gradient norm) or null")
    v = _get(cfg, "trainer.weight_decay")
    if not (_is_number(v) and v >= 0):
        raise ConfigError("trainer.weight_decay", v, "a number >= 0 (AdamW's decoupled decay; 0: Adam)")
    for key in ("trainer.resume", "trainer.progress", "trainer.cuda_graph", "data.download"):
        boolean(key)
    one_of("trainer.on_nonfinite", ("stop", "skip"))
    one_of("trainer.precision", ("fp32", "bf16"))
    v = _get(cfg, "trainer.checkpoint_every_minutes")
    if not (_is_number(v) and v >= 0):
        raise ConfigError("trainer.checkpoint_every_minutes", v, "a number of minutes >= 0 (0: only at epoch ends)")
    v = _get(cfg, "trainer.visual_every")
    if not (_is_int(v) and v >= 0):
        raise ConfigError("trainer.visual_every", v, "an integer >= 0 (0: no pictures)")
    positive_int("trainer.visual_images")
    positive_int("trainer.val_every")
    v = _get(cfg, "data.val_fraction")
    if not (_is_number(v) and 0 < v < 1):
        raise ConfigError("data.val_fraction", v, "a number in (0, 1)")
    for key in ("data.canvas", "data.train_limit", "data.eval_limit"):
        positive_int(key, optional=True)
    v = _get(cfg, "data.distractors")
    if not (_is_int(v) and v >= 0):
        raise ConfigError("data.distractors", v, "an integer >= 0")
    positive_int("data.distractor_size")
    canvas, pos = _get(cfg, "data.canvas"), _get(cfg, "data.position")
    if pos is not None and (canvas is None or len(pos) != 2 or not all(_is_int(p) and p >= 0 for p in pos)):
        raise ConfigError("data.position", pos, "null, or [row, column] of the image's top-left pixel on a canvas")
    if not _is_int(_get(cfg, "seed")):
        raise ConfigError("seed", _get(cfg, "seed"), "an integer")
    device = _get(cfg, "device")
    if not (isinstance(device, str) and re.fullmatch(DEVICES, device)):
        raise ConfigError("device", device, DEVICES_ALLOWED)


def resolve_device(name: str) -> torch.device:
    """The `device` key (or a --device option) as a torch.device: auto is CUDA when present, else the CPU."""
    if not re.fullmatch(DEVICES, name):
        raise UserError(f"invalid device {name!r}; allowed: {DEVICES_ALLOWED}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"invalid config: device={name!r}; CUDA is not available here (use device=auto or cpu)")
    return torch.device(name)
