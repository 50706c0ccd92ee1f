"""The glimpse task as gymnasium environments: classify an image from a few glimpses, choosing where to look.

`GlimpseEnv` is one episode at a time (`gymnasium.make`); `GlimpseVectorEnv` runs N
episodes on whole torch batches on the CPU or a GPU (`gymnasium.make_vec`), one
sensor call per step for all N. Both read the image through the project's retina
(`glimpse.sensor.Sensor`), the one every model uses, and take their images from
`glimpse.data.GlimpseData` built from the same config as `python -m glimpse.train`,
so an agent here sees exactly what RAM sees in training and evaluation.

`import glimpse` registers one id per RAM paper preset (conf/experiment/ram_*.yaml): the environment takes
the preset's data, glimpse count and retina, read from the composed preset when it is made.

    glimpse/MNIST-v0                    ram_mnist
    glimpse/TranslatedMNIST-v0          ram_translated60
    glimpse/ClutteredMNIST60-v0         ram_cluttered60
    glimpse/ClutteredMNIST100-v0        ram_cluttered100
    glimpse/ClutteredFashionMNIST60-v0  ram_cluttered_fashion60
    glimpse/FashionMNIST-v0             ram_mnist with data=fashion_mnist
    glimpse/CIFAR10-v0                  ram_mnist with data=cifar10

Torch and the data modules are imported inside the functions that use them: `import
glimpse` imports this module to register the ids and should stay cheap.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from torch import Tensor

    from glimpse.data import GlimpseData
    from glimpse.models.ram import RAM

SPLITS = ("train", "val", "test")
STARTS = ("random", "centre")
# Images drawn per make_canvas call at a reset, into the episodes' own buffer: 1024 100x100 canvases took
# 40 ms in one call and 17 ms in chunks of 256, whose temporaries the allocator reuses instead of mapping anew.
DRAW_CHUNK = 256

# glimpse/<name>-v0 -> the environment's arguments. Names only: the values live in conf/, composed at `make`.
# Fashion-MNIST and CIFAR-10 at their own size have no preset: they take ram_mnist's glimpses and retina.
REGISTERED: dict[str, dict[str, str]] = {
    "MNIST": dict(experiment="ram_mnist"),
    "TranslatedMNIST": dict(experiment="ram_translated60"),
    "ClutteredMNIST60": dict(experiment="ram_cluttered60"),
    "ClutteredMNIST100": dict(experiment="ram_cluttered100"),
    "ClutteredFashionMNIST60": dict(experiment="ram_cluttered_fashion60"),
    "FashionMNIST": dict(experiment="ram_mnist", data="fashion_mnist"),
    "CIFAR10": dict(experiment="ram_mnist", data="cifar10"),
}


def register_envs() -> None:
    """Register glimpse/<name>-v0 for each entry of REGISTERED: string entry points, so nothing loads until `make`."""
    for name, kwargs in REGISTERED.items():
        env_id = f"glimpse/{name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id, entry_point="glimpse.env:GlimpseEnv", vector_entry_point="glimpse.env:GlimpseVectorEnv",
                kwargs=kwargs
            )


register_envs()


# ---------------------------------------------------------------------------------------------
# Config and data: the same config training composes, the data loaded once per process.

_DATA: OrderedDict[tuple, GlimpseData] = OrderedDict()
_DATA_KEEP = 2  # GlimpseData objects kept alive: make_vec's sync mode and check_env build many envs on one config


def _load(cfg: DictConfig, device: str) -> GlimpseData:
    """GlimpseData of `cfg`, shared by every environment of this process built on the same data config and seed."""
    from omegaconf import OmegaConf

    from glimpse.data import GlimpseData

    key = (OmegaConf.to_yaml(cfg.data, resolve=True), cfg.seed, str(device))
    if key not in _DATA:
        data = GlimpseData(cfg.data, cfg.seed, device)
        _DATA[key] = data
        while len(_DATA) > _DATA_KEEP:
            _DATA.popitem(last=False)
    _DATA.move_to_end(key)
    return _DATA[key]


def _setup(
    experiment: str | None, data: str | GlimpseData | None, split: str, seed: int, glimpses: int | None,
    patch: int | None, scales: int | None, scale_factor: float | None, resize: str | None, start: str,
    overrides: Sequence[str], device: str | None,
) -> tuple[DictConfig, GlimpseData]:
    """The config `python -m glimpse.train experiment=<experiment> data=<data> ...` would run, and its data.

    A setting left None keeps the preset's value (without a preset, the project's default)."""
    from glimpse.config import compose_config
    from glimpse.data import GlimpseData

    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {', '.join(SPLITS)}")
    if start not in STARTS:
        raise ValueError(f"start={start!r}; allowed: {', '.join(STARTS)}")
    given = isinstance(data, GlimpseData)
    chosen = [f"experiment={experiment}"] if experiment is not None else []
    if data is not None and not given:
        chosen.append(f"data={data}")
    settings = {"model.glimpses": glimpses, "sensor.patch": patch, "sensor.scales": scales,
                "sensor.scale_factor": scale_factor, "sensor.resize": resize}
    chosen += [f"seed={seed}"] + [f"{key}={value}" for key, value in settings.items() if value is not None]
    # The checks of training's config (one clear UserError line per mistake) apply to the sensor settings too.
    cfg = compose_config(chosen + list(overrides))
    if "glimpses" not in cfg.model:
        raise ValueError(f"experiment={experiment!r} trains {cfg.model.name}, which reads no glimpses; "
                         "the environment takes a glimpse model's preset (ram_*, soft_*, dram_*)")
    if given:
        if device is not None and str(device) != str(data.device):
            raise ValueError(f"device={device!r} differs from the given data's device {data.device}")
        cfg.data, cfg.seed = data.cfg, data.seed
        return cfg, data
    if device in (None, "auto"):
        import torch

        device = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    return cfg, _load(cfg, device)


def _spaces(cfg: DictConfig, data: GlimpseData) -> tuple[spaces.Dict, spaces.Dict]:
    channels = data.image_shape[0]
    p = cfg.sensor.patch
    observation = spaces.Dict({
        "glimpse": spaces.Box(0.0, 1.0, (cfg.sensor.scales, channels, p, p), np.float32),
        "location": spaces.Box(-1.0, 1.0, (2,), np.float32),
    })
    action = spaces.Dict({
        "location": spaces.Box(-1.0, 1.0, (2,), np.float32),
        "prediction": spaces.Discrete(data.classes),
    })
    return observation, action


# ---------------------------------------------------------------------------------------------
# The task on whole batches: what both environments run.


class _Episodes:
    """B episodes of the glimpse task in lockstep on `data`'s device: images, labels, locations, glimpses seen.

    Every episode lasts exactly T steps and all B start together, so one counter `t`
    (glimpses seen) serves them all and a step is one sensor call on the whole batch.
    """

    def __init__(self, cfg: DictConfig, data: GlimpseData, split: str, batch: int, reward_every_step: bool, name: str):
        import torch

        from glimpse.sensor import Sensor

        s = cfg.sensor
        self.sensor = Sensor(s.patch, s.scales, s.scale_factor, s.resize)
        self.data, self.split, self.fresh = data, getattr(data, split), split == "train"
        self.glimpses, self.classes, self.batch = cfg.model.glimpses, data.classes, batch
        self.reward_every_step, self.name = reward_every_step, name
        self.device = data.device
        # Drawn into in place at every reset: the memory is touched once, not allocated per episode.
        # the images as the data layer serves them
        self.images = torch.zeros(batch, *data.image_shape, dtype=torch.uint8, device=self.device)
        self.labels = torch.zeros(batch, dtype=torch.int64, device=self.device)
        self.location = torch.zeros(batch, 2, device=self.device)
        self.index = np.zeros(batch, np.int64)
        self.generator = torch.Generator(self.device)
        self.t = 0  # glimpses seen; 0 before the first reset

    def __len__(self) -> int:
        return len(self.split)

    def begin(self, index: np.ndarray, location: np.ndarray, canvas_seed: int) -> Tensor:
        """Start B episodes on the split's images at `index`, the first glimpse at `location` (B, 2); its glimpses."""
        import torch

        loc = torch.as_tensor(location, dtype=torch.float32, device=self.device)
        if loc.numel() != 2 * self.batch or loc.isnan().any():
            raise ValueError(f"{self.name}: a start location is (x, y) in [-1, 1]^2, one per episode; "
                             f"got {location!r:.80}")
        self.index = np.asarray(index, np.int64)
        idx = torch.as_tensor(self.index, device=self.device)
        self.generator.manual_seed(canvas_seed)
        stored = self.split.fixed if self.split.fixed is not None else self.split.images
        for lo in range(0, self.batch, DRAW_CHUNK):
            i = idx[lo : lo + DRAW_CHUNK]
            # Training images get fresh canvases every episode; validation and test read the canvases drawn once.
            self.images[lo : lo + DRAW_CHUNK] = (self.data.draw(self.split, i, self.generator) if self.fresh
                                                 else stored[i])
        self.labels = self.split.labels[idx]
        self.location = loc.reshape(self.batch, 2).clamp(-1, 1)
        self.t = 1
        return self.sensor(self.images, self.location)

    def check(self, location: Any, prediction: Any) -> tuple[Tensor, Tensor]:
        """The action as tensors (B, 2) and (B,), the location clipped into [-1, 1]^2; ValueError if it is no action."""
        import torch

        b, n = self.batch, self.name
        loc = torch.as_tensor(location, dtype=torch.float32, device=self.device)
        pred = torch.as_tensor(prediction, device=self.device)
        if loc.numel() != 2 * b:
            raise ValueError(f"{n}: action['location'] has shape {tuple(loc.shape)}; "
                             f"expected {(b, 2) if b > 1 else (2,)}")
        if pred.numel() != b or pred.dtype.is_floating_point or pred.dtype.is_complex or pred.dtype == torch.bool:
            raise ValueError(f"{n}: action['prediction'] is {pred.dtype} of shape {tuple(pred.shape)}; "
                             f"expected integer class indices in [0, {self.classes}) of shape {(b,) if b > 1 else ()}")
        loc, pred = loc.reshape(b, 2), pred.reshape(b)
        # both checks in one sync
        nan, outside = torch.stack((loc.isnan().any(), ((pred < 0) | (pred >= self.classes)).any())).tolist()
        if nan:
            raise ValueError(f"{n}: action['location'] contains NaN; a location is (x, y) in [-1, 1]^2 "
                             "(values outside are clipped into it, NaN cannot be)")
        if outside:
            bad = pred[(pred < 0) | (pred >= self.classes)][0].item()
            raise ValueError(f"{n}: action['prediction']={bad} is not a class; "
                             f"allowed: an integer in [0, {self.classes})")
        return loc.clamp(-1, 1), pred

    def advance(self, location: Tensor, prediction: Tensor) -> tuple[Tensor, Tensor, bool, Tensor]:
        """One step with a checked action: (glimpses, rewards, terminated, correct).

        After t < T glimpses the episode moves to `location` and reads glimpse t+1.
        After T the prediction is the classification: the episode ends, and the
        observation returned is the T-th glimpse again (its location action is unused).
        """
        correct = prediction == self.labels
        last = self.t == self.glimpses
        if self.reward_every_step:
            reward = correct.float().div_(self.glimpses)
        else:
            reward = correct.float() if last else correct.new_zeros(self.batch, dtype=self.location.dtype)
        if not last:
            self.location = location
            self.t += 1
        # The sensor keeps glimpses in [0, 1]: it only averages or interpolates pixels in [0, 1].
        return self.sensor(self.images, self.location), reward, last, correct


def _start_locations(start: str, rng: np.random.Generator, batch: int) -> np.ndarray:
    """l_1: uniform over [-1, 1]^2 (as RAM in training) or the centre (RAM's evaluation default)."""
    if start == "centre":
        return np.zeros((batch, 2), np.float32)
    return rng.uniform(-1.0, 1.0, (batch, 2)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The environments.


class GlimpseEnv(gymnasium.Env):
    """Classify an image from `glimpses` glimpses, choosing where each next one looks.

    ## Description

    The glimpse task of the Recurrent Attention Model (Mnih, Heess, Graves and
    Kavukcuoglu, 2014). An episode is one image of a dataset split, seen only
    through the retina rho(x, l): `scales` square patches centred on a location l,
    patch i of side `patch * scale_factor**i` pixels, each resized to
    `patch x patch` (pixels outside the image read as zero). The agent decides
    where to look next after every glimpse and, after the last one, which class
    the image shows. RAM plays it with its glimpse, core, location and action
    networks (`RAMPolicy`).

    Locations use the project's convention: (x, y) in [-1, 1]^2, (-1, -1) the
    top-left corner of the image, (1, 1) the bottom-right, (0, 0) the centre.

    ## Observation Space

    A `Dict`:

    | key | space | meaning |
    |-----|-------|---------|
    | `glimpse` | `Box(0, 1, (scales, channels, patch, patch), float32)` | rho(x, l_t), finest scale first |
    | `location` | `Box(-1, 1, (2,), float32)` | l_t, where that glimpse was read |

    ## Action Space

    A `Dict`:

    | key | space | meaning |
    |-----|-------|---------|
    | `location` | `Box(-1, 1, (2,), float32)` | l_{t+1}, where to look next (unused on the last step) |
    | `prediction` | `Discrete(10)` | the class; scored on the last step only (unless `reward_every_step`) |

    A location outside [-1, 1]^2 (infinities included) is clipped into it, as RAM
    clamps its sampled locations; a NaN location, or a prediction that is not an
    integer class in [0, 10), raises ValueError.

    ## Rewards

    1 on the last step if the prediction is the image's label, else 0: RAM's
    reward. With `reward_every_step=True` the prediction of every step is scored,
    1/glimpses for each correct one, so an episode's return is the fraction of
    steps whose prediction was right (at most 1 either way).

    ## Starting State

    An image of the split drawn uniformly (training images on a fresh canvas with
    fresh clutter for the canvas variants; validation and test images on the
    canvases drawn once, the ones evaluation scores) and the first glimpse, at l_1
    uniform over [-1, 1]^2 (`start="random"`, RAM in training) or at the centre
    (`start="centre"`, RAM's evaluation default). `reset(options=...)` may fix
    them: `{"index": i}` the i-th image of the split, `{"location": (x, y)}` l_1.

    ## Episode End

    Termination on the `glimpses`-th step: the reset's observation is glimpse 1,
    step t < T moves to the action's location and returns glimpse t + 1, and step
    T, taken after all T glimpses were seen, is the classification. The
    observation it returns repeats glimpse T. There is no truncation.

    `info` holds `index` (the image's position in the split) and, on the last
    step, `label` and `correct`.

    ## Arguments

    `experiment`: an `experiment=` preset (`ram_cluttered60`; the registered ids
    name one) whose data, glimpse count and retina the environment takes;
    `data`: a `data=` config name (`mnist`, `translated_mnist`, `cluttered_mnist60`,
    `cluttered_mnist100`, `fashion_mnist`, `cluttered_fashion_mnist60`, `cifar10`)
    or a `GlimpseData`, in place of the preset's data;
    `split`: `train`, `val` or `test`; `seed`: the project's `seed` (which training
    images form validation, and its canvases; episodes are seeded by `reset`);
    `glimpses`, `patch`, `scales`, `scale_factor`, `resize`: T and the retina, in
    place of the preset's; left None, the preset's (without a preset the project's
    defaults: mnist, conf/model/ram.yaml's glimpses, conf/sensor/mnist.yaml);
    `start`; `reward_every_step`; `overrides`: further `python -m glimpse.train`
    overrides (`data.root=...`, `data.train_limit=1000`); `device`.

    ```python
    >>> import gymnasium, glimpse
    >>> env = gymnasium.make("glimpse/ClutteredMNIST60-v0", split="test", start="centre")
    >>> obs, info = env.reset(seed=0)
    >>> obs["glimpse"].shape, obs["location"]
    ((3, 1, 12, 12), array([0., 0.], dtype=float32))

    ```
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(
        self,
        data: str | GlimpseData | None = None,
        split: str = "train",
        seed: int = 0,
        glimpses: int | None = None,
        patch: int | None = None,
        scales: int | None = None,
        scale_factor: float | None = None,
        resize: str | None = None,
        start: str = "random",
        reward_every_step: bool = False,
        overrides: Sequence[str] = (),
        device: str | None = None,
        render_mode: str | None = None,
        experiment: str | None = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}; allowed: None, {', '.join(self.metadata['render_modes'])}")
        self.config, data = _setup(experiment, data, split, seed, glimpses, patch, scales, scale_factor, resize, start,
                                   overrides, device)
        self.split, self.start, self.render_mode = split, start, render_mode
        self.observation_space, self.action_space = _spaces(self.config, data)
        self._episodes = _Episodes(self.config, data, split, 1, reward_every_step, type(self).__name__)
        self._done = False

    @property
    def glimpses(self) -> int:
        """T: the glimpses of an episode, and its steps."""
        return self._episodes.glimpses

    @property
    def num_images(self) -> int:
        """Images in the split: `reset(options=...)` takes their positions 0 .. num_images - 1."""
        return len(self._episodes)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict]:
        super().reset(seed=seed)
        options = options or {}
        ep = self._episodes
        index = options.get("index")
        if index is None:
            index = int(self.np_random.integers(len(ep)))
        elif not 0 <= int(index) < len(ep):
            raise ValueError(f"{type(self).__name__}: options['index']={index}; "
                             f"allowed: 0 to {len(ep) - 1} ({self.split} split)")
        location = options.get("location")
        if location is None:
            location = _start_locations(self.start, self.np_random, 1)
        glimpse = ep.begin(np.array([index]), location, int(self.np_random.integers(2**63 - 1)))
        self._done = False
        return self._observation(glimpse), {"index": int(index)}

    def step(self, action: dict[str, Any]) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        ep = self._episodes
        if ep.t == 0 or self._done:
            raise gymnasium.error.ResetNeeded(f"{type(self).__name__}: call reset() before step() "
                                              "(the episode has ended)")
        location, prediction = ep.check(*_unpack(action, type(self).__name__))
        glimpse, reward, terminated, correct = ep.advance(location, prediction)
        info: dict[str, Any] = {"index": int(ep.index[0])}
        if terminated:
            self._done = True
            info.update(label=int(ep.labels[0]), correct=bool(correct[0]))
        return self._observation(glimpse), float(reward[0]), terminated, False, info

    def _observation(self, glimpse: Tensor) -> dict[str, np.ndarray]:
        return {"glimpse": glimpse[0].cpu().numpy(), "location": self._episodes.location[0].cpu().numpy().copy()}

    def render(self) -> np.ndarray | None:
        """rgb_array: the image (H, W, 3) uint8 with the current glimpse's patches outlined, finest in red."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() without a render_mode: make the env with render_mode='rgb_array'")
            return None
        from glimpse.sensor import patch_origins

        ep = self._episodes
        image = ep.images[0].cpu().numpy()
        frame = np.repeat(image, 3, 0) if image.shape[0] == 1 else image[:3].copy()
        frame = np.ascontiguousarray(frame.transpose(1, 2, 0))
        h, w = frame.shape[:2]
        colours = [(255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 255, 0)]
        for i, side in enumerate(ep.sensor.sides):
            x0, y0 = patch_origins(ep.location[:1], side, h, w)[0].tolist()
            x1, y1 = x0 + side - 1, y0 + side - 1
            colour = colours[i % len(colours)]
            for x in (x0, x1):
                if 0 <= x < w:
                    frame[max(y0, 0) : min(y1, h - 1) + 1, x] = colour
            for y in (y0, y1):
                if 0 <= y < h:
                    frame[y, max(x0, 0) : min(x1, w - 1) + 1] = colour
        return frame


def _unpack(action: Any, name: str) -> tuple[Any, Any]:
    try:
        return action["location"], action["prediction"]
    except (TypeError, KeyError, IndexError):
        raise ValueError(f"{name}: an action is a dict with 'location' (x, y) and 'prediction' (a class); "
                         f"got {action!r:.80}") from None


class GlimpseVectorEnv(VectorEnv):
    """N glimpse episodes on whole torch batches (CPU or GPU): one sensor call per step for all N.

    The same task, spaces, rewards and options as `GlimpseEnv` (see its docstring),
    batched: observations `{"glimpse": (N, scales, C, patch, patch), "location":
    (N, 2)}`, actions `{"location": (N, 2), "prediction": (N,)}`. Every episode lasts
    exactly `glimpses` steps and `reset` starts all N, so the N episodes run in
    lockstep and end on the same step.

    Autoreset is gymnasium's next-step mode (`metadata["autoreset_mode"]`): the
    step after the one that terminated ignores its actions, starts N new episodes
    and returns their first glimpses with reward 0 and terminated False.

    Observations, rewards, terminations and truncations are numpy arrays (rewards
    float32) by default; with `tensors=True` they are torch tensors on `device`,
    and actions may be tensors there too, so a GPU agent never leaves the GPU.
    `info` holds `index` (N,) and, on the last step, `label` and `correct`, each
    with gymnasium's `_key` mask. `reset(options=...)` takes `indices` (N,) and
    `locations` (N, 2) to fix the images and the first locations.

    ```python
    >>> envs = gymnasium.make_vec("glimpse/MNIST-v0", num_envs=256, tensors=True, device="cuda")
    ```
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        data: str | GlimpseData | None = None,
        split: str = "train",
        seed: int = 0,
        glimpses: int | None = None,
        patch: int | None = None,
        scales: int | None = None,
        scale_factor: float | None = None,
        resize: str | None = None,
        start: str = "random",
        reward_every_step: bool = False,
        overrides: Sequence[str] = (),
        device: str | None = None,
        tensors: bool = False,
        render_mode: str | None = None,
        experiment: str | None = None,
    ):
        if not (isinstance(num_envs, int) and num_envs > 0):
            raise ValueError(f"num_envs={num_envs!r}; allowed: a positive integer")
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}; GlimpseVectorEnv does not render (GlimpseEnv does)")
        self.config, data = _setup(experiment, data, split, seed, glimpses, patch, scales, scale_factor, resize, start,
                                   overrides, device)
        self.num_envs, self.split, self.start, self.tensors = num_envs, split, start, tensors
        self.single_observation_space, self.single_action_space = _spaces(self.config, data)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._episodes = _Episodes(self.config, data, split, num_envs, reward_every_step, type(self).__name__)
        self._autoreset = False

    @property
    def glimpses(self) -> int:
        """T: the glimpses of an episode, and its steps."""
        return self._episodes.glimpses

    @property
    def num_images(self) -> int:
        """Images in the split: `reset(options=...)` takes their positions 0 .. num_images - 1."""
        return len(self._episodes)

    @property
    def device(self) -> torch.device:
        return self._episodes.device

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        options = options or {}
        ep, n, name = self._episodes, self.num_envs, type(self).__name__
        indices = options.get("indices")
        if indices is None:
            indices = self.np_random.integers(len(ep), size=n)
        else:
            indices = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices, np.int64)
            if indices.shape != (n,) or indices.min() < 0 or indices.max() >= len(ep):
                raise ValueError(f"{name}: options['indices'] must be {n} image positions in 0..{len(ep) - 1} "
                                 f"({self.split} split)")
        locations = options.get("locations")
        if locations is None:
            locations = _start_locations(self.start, self.np_random, n)
        glimpse = ep.begin(indices, locations, int(self.np_random.integers(2**63 - 1)))
        self._autoreset = False
        return self._observation(glimpse), {"index": ep.index.copy(), "_index": np.ones(n, bool)}

    def _begin_again(self) -> Tensor:
        ep, n = self._episodes, self.num_envs
        indices = self.np_random.integers(len(ep), size=n)
        return ep.begin(indices, _start_locations(self.start, self.np_random, n),
                        int(self.np_random.integers(2**63 - 1)))

    def step(self, actions: dict[str, Any]) -> tuple[dict, Any, Any, Any, dict]:
        import torch

        ep, n = self._episodes, self.num_envs
        if ep.t == 0:
            raise gymnasium.error.ResetNeeded(f"{type(self).__name__}: call reset() before step()")
        if self._autoreset:  # next-step autoreset: this step's actions are ignored
            glimpse = self._begin_again()
            self._autoreset = False
            reward = torch.zeros(n, device=ep.device)
            terminated, info = False, {}
        else:
            location, prediction = ep.check(*_unpack(actions, type(self).__name__))
            glimpse, reward, terminated, correct = ep.advance(location, prediction)
            info = {}
            if terminated:
                self._autoreset = True
                info = {"label": self._out(ep.labels), "_label": np.ones(n, bool),
                        "correct": self._out(correct), "_correct": np.ones(n, bool)}
        info.update(index=ep.index.copy(), _index=np.ones(n, bool))
        done = torch.full((n,), terminated, device=ep.device) if self.tensors else np.full(n, terminated)
        truncated = torch.zeros(n, dtype=torch.bool, device=ep.device) if self.tensors else np.zeros(n, bool)
        return self._observation(glimpse), self._out(reward), done, truncated, info

    def _out(self, x: Tensor) -> Any:
        return x if self.tensors else x.cpu().numpy()

    def _observation(self, glimpse: Tensor) -> dict:
        location = self._episodes.location.clone()
        return {"glimpse": self._out(glimpse), "location": self._out(location)}


# ---------------------------------------------------------------------------------------------
# Agents and tools.


class FlatActions(gymnasium.ActionWrapper):
    """The Dict action as one Box, for agents without Dict actions (stable-baselines3).

    The action is `[x, y, s_0, ..., s_9]` in `Box(-1, 1, (12,), float32)`: the next
    location (x, y) and one score per class; the prediction is the class of the
    highest score (argmax, the first on ties). Combine with gymnasium's
    `FlattenObservation` for a flat observation (`flat(env)` does both).
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self.classes = int(env.action_space["prediction"].n)
        self.action_space = spaces.Box(-1.0, 1.0, (2 + self.classes,), np.float32)

    def action(self, action: np.ndarray) -> dict[str, Any]:
        a = np.asarray(action, np.float32).reshape(2 + self.classes)
        return {"location": a[:2], "prediction": int(np.argmax(a[2:]))}


def flat(env: gymnasium.Env) -> gymnasium.Env:
    """`env` with one Box action (`FlatActions`) and one flat Box observation: [glimpse pixels..., x, y]."""
    return gymnasium.wrappers.FlattenObservation(FlatActions(env))


class RAMPolicy:
    """A trained RAM as the agent, greedy: where to look is the location network's mean mu_t.

    Each observation goes through RAM's own networks, one step at a time: the
    glimpse network encodes (rho(x, l_t), l_t) into g_t, the core network updates
    h_t, the location network gives l_{t+1} = mu_t and the action network the
    class. These are the float operations of `RAM.episode` with greedy=True in the
    same order, so the predictions are those of `glimpse.evaluate`'s greedy figure.
    """

    def __init__(self, model: RAM):
        self.model = model.eval()
        self.state = None

    def reset(self) -> None:
        """Forget the core state: the next observation is a new episode's first glimpse."""
        self.state = None

    def __call__(self, observation: dict[str, Any]) -> dict[str, Tensor]:
        import torch

        m = self.model
        device = next(m.parameters()).device
        with torch.no_grad():
            glimpse = torch.as_tensor(observation["glimpse"], device=device)
            location = torch.as_tensor(observation["location"], device=device)
            g = m.glimpse_net(glimpse, location)
            h, self.state = m.core(g, self.state)
            return {"location": m.location_net(h), "prediction": m.action_net(h).argmax(1)}


def ram_error(model: RAM, data: GlimpseData, split: str = "test", batch_size: int = 1000,
              start: str | None = None) -> dict[str, float]:
    """Error (%) of a trained RAM played greedily through GlimpseVectorEnv on every image of `split`, in order.

    The images go in batches of `batch_size` in the order of `GlimpseData.eval_batches`
    (the batches `glimpse.evaluate` scores), the retina and T are the model's, and
    the first location is `start` (default: the model's `eval_start`). With
    eval_start=centre the figure equals `glimpse.evaluate`'s `error_greedy`.
    """
    n = len(getattr(data, split))
    s = model.sensor
    settings = dict(data=data, split=split, glimpses=model.glimpses, patch=s.patch, scales=s.scales,
                    scale_factor=s.scale_factor, resize=s.resize, start=start or model.eval_start, tensors=True)
    envs: dict[int, GlimpseVectorEnv] = {}  # one per batch size: the last batch may be smaller
    policy = RAMPolicy(model)
    wrong = 0
    for lo in range(0, n, batch_size):
        size = min(batch_size, n - lo)
        env = envs.get(size) or envs.setdefault(size, GlimpseVectorEnv(size, **settings))
        obs, _ = env.reset(seed=lo, options={"indices": np.arange(lo, lo + size)})
        policy.reset()
        terminated = False
        while not terminated:
            obs, reward, done, _, _ = env.step(policy(obs))
            terminated = bool(done[0])
        wrong += size - int(reward.sum().item())
    return {"error_greedy": 100.0 * wrong / n, "episodes": n}


def vector_steps_per_second(env_id: str, num_envs: int, steps: int, **kwargs: Any) -> float:
    """Env-steps per second (num_envs * steps / seconds) of `gymnasium.make_vec(env_id, num_envs)` under random actions.

    Autoresets are included as they come (one step in T + 1); building the env, one
    warm-up episode with its autoreset, and drawing the random actions (a pool of 8
    batches, drawn beforehand) are not.
    """
    envs = gymnasium.make_vec(env_id, num_envs=num_envs, **kwargs)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(8)]
    envs.reset(seed=0)
    glimpses = envs.unwrapped.glimpses
    for i in range(glimpses + 1):
        envs.step(actions[i % 8])
    tic = time.perf_counter()
    for i in range(steps):
        envs.step(actions[i % 8])
    seconds = time.perf_counter() - tic
    envs.close()
    return num_envs * steps / seconds
