"""Vectorized environments that speak torch: envpool first, gymnasium vector envs as the fallback,
and users' own gymnasium envs (an importable `module:EnvId-v0`, a callable making one env, or a
ready vector env).

Every backend auto-resets an env on the step *after* it reported terminated or truncated
(gymnasium's NEXT_STEP autoreset mode, which fastrl requests and checks): that step ignores the
action, pays no reward and returns the first observation of the next episode. The wrapper reports
such steps in `VecStep.is_reset_step` so the caller can keep the fake transition (last obs of the
old episode -> first obs of the new one) out of the replay buffer.

Observations reach the learner in one of two forms: images, uint8 [C, H, W] (channel-last and
channel-less uint8 frames are brought to that layout here), or float32 vectors of any shape.

envpool's Atari envs are made with the Nature DQN / CleanRL protocol (`envpool_options`): for
training, a lost life ends the learner's episode (terminated) and rewards are clipped to their
sign, while the episode statistics follow the whole game and its unclipped score; for evaluation,
full games with unclipped rewards.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastrl.settings import ConfigError

# envpool declares float64 bounds on float32 boxes; gymnasium warns about it on every space.
warnings.filterwarnings("ignore", message=".*precision lowered by casting.*", category=UserWarning)

# How an env's own observations become `EnvSpec.obs_shape`, applied to every observation.
OBS_AS_IS = "as-is"
OBS_CHANNEL_LAST = "channel-last"  # uint8 [H, W, C] -> [C, H, W]
OBS_NO_CHANNEL = "no-channel"  # uint8 [H, W] -> [1, H, W]
IMAGE_CHANNELS = (1, 3, 4)  # a last dim of these sizes, below the first, reads as channel-last

SUPPORTED_SPACES = "supported: Discrete or bounded Box actions; Box observations"


@dataclass(frozen=True)
class EnvSpec:
    env_id: str  # an id (envpool, gymnasium, or gymnasium's "module:EnvId-v0"), or a user env's name
    # "envpool", "gymnasium" (a registered id), "callable" (`env_fn()` makes one gymnasium env,
    # vectorized here) or "vector" (`env_fn(num_envs)` gives a gymnasium vector env)
    backend: str
    obs_shape: tuple[int, ...]
    obs_dtype: torch.dtype
    discrete: bool
    num_actions: int  # discrete: number of actions; continuous: 0
    action_shape: tuple[int, ...]  # () for discrete
    action_low: tuple[float, ...]  # continuous bounds; empty for discrete
    action_high: tuple[float, ...]
    max_episode_steps: int | None
    obs_layout: str = OBS_AS_IS  # OBS_AS_IS, OBS_CHANNEL_LAST or OBS_NO_CHANNEL
    # Observations are stacks of this many frames along their leading dim (envpool's Atari: 4),
    # each a step newer than the one before: the replay buffer stores one frame per transition.
    frame_stack: int = 1
    # Only for the "callable" and "vector" backends. Not part of what the spec is equal to: two
    # specs of the same spaces describe the same learning problem whoever builds the env.
    env_fn: Callable[..., Any] | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def action_dtype(self) -> torch.dtype:
        return torch.int64 if self.discrete else torch.float32

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3 and self.obs_dtype == torch.uint8


@dataclass
class VecStep:
    next_obs: torch.Tensor  # [N, *obs_shape] on the device
    reward: torch.Tensor  # [N] float32
    terminated: torch.Tensor  # [N] float32 (1.0 = true end of the MDP)
    truncated: np.ndarray  # [N] bool (time limit; bootstrap through it)
    is_reset_step: np.ndarray  # [N] bool: this step was the auto-reset step, not a real transition


# --- spaces -> spec ---

def _unsupported(env_id: str, what: str, space: Any) -> ConfigError:
    return ConfigError(f"--env: {env_id} has {what} space {space}, which fastrl cannot learn from; {SUPPORTED_SPACES}")


def _obs_layout(env_id: str, obs_space: Any) -> tuple[tuple[int, ...], torch.dtype, str]:
    """(shape, dtype, layout) the learner sees for `obs_space`. uint8 images go to the CNN as
    [C, H, W] bytes; every other observation is a float32 vector (float64 MuJoCo observations are
    trained in float32: half the buffer memory, no loss in practice)."""
    import gymnasium as gym

    if not isinstance(obs_space, gym.spaces.Box):
        raise _unsupported(env_id, "observation", obs_space)
    shape = tuple(int(d) for d in obs_space.shape)
    dtype = np.dtype(obs_space.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise _unsupported(env_id, "observation", obs_space)
    if dtype != np.uint8 or len(shape) < 2:  # bytes that are not an image (ALE RAM) are numbers
        return shape, torch.float32, OBS_AS_IS
    if len(shape) == 2:
        return (1, *shape), torch.uint8, OBS_NO_CHANNEL
    if len(shape) == 3:
        if shape[-1] in IMAGE_CHANNELS and shape[0] > shape[-1]:
            return (shape[2], shape[0], shape[1]), torch.uint8, OBS_CHANNEL_LAST
        return shape, torch.uint8, OBS_AS_IS
    raise ConfigError(f"--env: {env_id} has observation space {obs_space}: uint8 observations of more than 3 "
                      f"dimensions are neither an image ([C, H, W], [H, W, C] or [H, W]) nor a vector; "
                      f"{SUPPORTED_SPACES}")


def _spec_from_spaces(env_id: str, backend: str, obs_space: Any, act_space: Any, max_steps: int | None,
                      env_fn: Callable[..., Any] | None = None, stack_num: int = 1) -> EnvSpec:
    """The spec of these spaces, or a one-line ConfigError for spaces fastrl cannot learn from.
    `stack_num`: frames per stacked image observation (envpool's Atari), stored once each by the
    replay buffer."""
    import gymnasium as gym

    obs_shape, obs_dtype, layout = _obs_layout(env_id, obs_space)
    image = len(obs_shape) == 3 and obs_dtype == torch.uint8
    frame_stack = stack_num if image and stack_num > 1 and obs_shape[0] % stack_num == 0 else 1
    common = {"max_episode_steps": max_steps, "obs_layout": layout, "frame_stack": frame_stack, "env_fn": env_fn}
    if isinstance(act_space, gym.spaces.Discrete):
        if int(act_space.start) != 0:  # the learner's actions are 0..n-1
            raise ConfigError(f"--env: {env_id} has action space {act_space}, whose actions start at "
                              f"{int(act_space.start)}, not 0; {SUPPORTED_SPACES}")
        return EnvSpec(env_id, backend, obs_shape, obs_dtype, True, int(act_space.n), (), (), (), **common)
    if isinstance(act_space, gym.spaces.Box):
        if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
            raise ConfigError(f"--env: {env_id} has action space {act_space} with infinite bounds, and DDPG/TD3 "
                              f"act inside a bounded box; {SUPPORTED_SPACES}")
        low = tuple(float(x) for x in np.asarray(act_space.low, dtype=np.float64).ravel())
        high = tuple(float(x) for x in np.asarray(act_space.high, dtype=np.float64).ravel())
        return EnvSpec(env_id, backend, obs_shape, obs_dtype, False, 0,
                       tuple(int(d) for d in act_space.shape), low, high, **common)
    raise _unsupported(env_id, "action", act_space)


# --- ids, user envs ---

@functools.lru_cache(maxsize=1)
def _envpool_ids() -> frozenset[str]:
    try:
        import envpool
    except ImportError:  # envpool has no wheel for some platforms; gymnasium still works
        return frozenset()
    return frozenset(envpool.list_all_envs())


def _gymnasium_ids() -> list[str]:
    import gymnasium as gym

    return list(gym.registry.keys())


def _import_env_module(env_id: str) -> str:
    """For gymnasium's `module.path:EnvId-v0` form: import the module (its import registers the
    env) and return `EnvId-v0`."""
    module, _, name = env_id.partition(":")
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"--env: cannot import module {module!r} of {env_id!r} ({exc}); the form is "
                          f"module.path:EnvId-v0, where importing module.path registers EnvId-v0") from None
    return name


def lookup_spec(env_id: str) -> EnvSpec:
    """The spec of `env_id` without building a vector env. Raises ConfigError for unknown ids.

    `module.path:EnvId-v0` imports module.path, then makes EnvId-v0 through gymnasium (as
    `gymnasium.make` does), and runs gymnasium's env checker on it (findings are warnings)."""
    user_module = ":" in env_id
    gym_id = _import_env_module(env_id) if user_module else env_id
    if not user_module and env_id in _envpool_ids():
        import envpool

        spec = envpool.make_spec(env_id)
        max_steps = getattr(spec.config, "max_episode_steps", None)
        return _spec_from_spaces(env_id, "envpool", spec.gymnasium_observation_space,
                                 spec.gymnasium_action_space, max_steps,
                                 stack_num=int(getattr(spec.config, "stack_num", 1)))
    gym_ids = _gymnasium_ids()
    if gym_id in gym_ids:
        import gymnasium as gym

        env = gym.make(env_id)
        try:
            max_steps = env.spec.max_episode_steps if env.spec is not None else None
            spec = _spec_from_spaces(env_id, "gymnasium", env.observation_space, env.action_space, max_steps)
            if user_module:
                check_user_env(env, env_id)
            return spec
        finally:
            env.close()
    known = sorted(set(gym_ids) if user_module else _envpool_ids() | set(gym_ids))
    close = difflib.get_close_matches(gym_id, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if user_module:
        raise ConfigError(f"--env: importing {env_id.partition(':')[0]!r} registered no gymnasium environment "
                          f"{gym_id!r}{hint}")
    raise ConfigError(f"--env: unknown environment id {env_id!r} (neither envpool nor gymnasium knows it){hint}")


def check_user_env(env: Any, name: str) -> None:
    """gymnasium's env checker on a user's env (a few resets and steps), its findings reported as
    Python warnings: a user env that bends gymnasium's API may still train."""
    from gymnasium.utils.env_checker import check_env

    findings: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_env(env.unwrapped, skip_render_check=True, skip_close_check=True)
        except Exception as exc:  # the checker asserts; any failure is a finding, not a stop
            findings.append(f"{type(exc).__name__}: {exc}")
    findings = [re.sub(r"\x1b\[[0-9;]*m", "", str(w.message)) for w in caught] + findings
    for finding in dict.fromkeys(findings):  # once each, in order
        warnings.warn(f"--env {name}: gymnasium's env checker: {finding}", UserWarning, stacklevel=3)


def spec_from_env_fn(env_fn: Callable[[], Any], name: str = "custom") -> EnvSpec:
    """The spec of a user env: `env_fn()` makes one gymnasium env; `TorchVecEnv` vectorizes it with
    gymnasium's SyncVectorEnv (NEXT_STEP autoreset), calling `env_fn` once per env. One env is
    made here, checked with gymnasium's env checker (warnings) and closed."""
    import gymnasium as gym

    env = env_fn()
    try:
        if not isinstance(env, gym.Env):
            raise ConfigError(f"--env: the env function of {name} returned a {type(env).__name__}, "
                              f"not a gymnasium.Env")
        max_steps = env.spec.max_episode_steps if env.spec is not None else None
        spec = _spec_from_spaces(name, "callable", env.observation_space, env.action_space, max_steps, env_fn)
        check_user_env(env, name)
        return spec
    finally:
        env.close()


@dataclass(frozen=True)
class ReadyVectorEnv:
    """A vector env the user built and owns: `TorchVecEnv` steps it but never closes it, and it has
    the one size it was built with."""

    envs: Any

    def __call__(self, num_envs: int) -> Any:
        if num_envs != self.envs.num_envs:
            raise ConfigError(f"--num-envs: the vector env passed in holds {self.envs.num_envs} envs; "
                              f"got {num_envs}")
        return self.envs


def spec_from_vector_env(envs: Any, name: str = "custom") -> EnvSpec:
    """The spec of a gymnasium vector env: a ready one (used as it is, at its size, never closed
    by fastrl), or a function `num_envs -> vector env` (called by each `TorchVecEnv`, which closes
    what it made). It must auto-reset in NEXT_STEP mode (`metadata["autoreset_mode"]`)."""
    import gymnasium as gym

    if isinstance(envs, gym.vector.VectorEnv):
        env_fn, probe = ReadyVectorEnv(envs), envs
    else:
        env_fn, probe = envs, envs(1)
    try:
        check_autoreset_mode(probe, name, required=True)
        return _spec_from_spaces(name, "vector", probe.single_observation_space, probe.single_action_space,
                                 None, env_fn)
    finally:
        if probe is not envs:
            probe.close()


def check_autoreset_mode(envs: Any, name: str, required: bool) -> None:
    """The wrapper's `is_reset_step` is only right under NEXT_STEP autoreset. `required`: a vector
    env that does not declare its mode is refused too (envpool's older versions declare none)."""
    import gymnasium as gym

    mode = getattr(envs, "metadata", {}).get("autoreset_mode")
    if mode is None and not required:
        return
    try:
        next_step = gym.vector.AutoresetMode(mode) == gym.vector.AutoresetMode.NEXT_STEP
    except ValueError:  # not a mode at all
        next_step = False
    if not next_step:
        declared = "declares no autoreset mode" if mode is None else f"auto-resets in mode {mode}"
        raise ConfigError(f"--env: the vector env of {name} {declared}; fastrl needs gymnasium's "
                          f"AutoresetMode.NEXT_STEP (in its metadata['autoreset_mode'])")


# --- env options per role ---

ROLES = ("train", "eval")
# The Nature DQN / CleanRL Atari protocol, in envpool's own options (envpool 1.2.5 defaults given
# explicitly, so that the protocol does not move with them): up to 30 no-ops after a game's reset,
# FIRE after every reset where the game has a FIRE action, no sticky actions. envpool's 4-frame
# skip with max-pooling, 84x84 grey frames, 4-frame stacks and 27,000-step (108k-frame) game limit
# are its defaults and left as they are (`EnvSpec.frame_stack` is read from them).
ATARI_PROTOCOL = {"noop_max": 30, "use_fire_reset": True, "repeat_action_probability": 0.0}
ATARI_ROLE_OPTIONS = {
    # A lost life ends the learner's episode (terminated), the game goes on; rewards clipped to their sign.
    "train": {"episodic_life": True, "reward_clip": True},
    # Whole games, their unclipped score.
    "eval": {"episodic_life": False, "reward_clip": False},
}


@functools.lru_cache(maxsize=None)
def is_envpool_atari(env_id: str) -> bool:
    """Whether `env_id` is envpool's Atari task: the one whose config takes life-loss ends and
    reward clipping."""
    if env_id not in _envpool_ids():
        return False
    import envpool

    config = envpool.make_spec(env_id).config
    return all(hasattr(config, key) for key in (*ATARI_PROTOCOL, *ATARI_ROLE_OPTIONS["train"]))


def envpool_options(spec: EnvSpec, role: str) -> dict[str, Any]:
    """The keyword arguments `envpool.make_gymnasium` gets for `spec`'s envs of this `role`
    ("train" or "eval"): the Atari protocol for envpool's Atari ids, {} for every other env."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if spec.backend != "envpool" or not is_envpool_atari(spec.env_id):
        return {}
    return {**ATARI_PROTOCOL, **ATARI_ROLE_OPTIONS[role]}


def scores_whole_games(options: dict[str, Any]) -> bool:
    """Whether envs made with `options` end the learner's episodes before the game ends, or clip
    its rewards: then the episode statistics follow the game (envpool's `info["terminated"]`,
    game over, and `info["reward"]`, the unclipped reward) instead of the learner's episodes."""
    return bool(options.get("episodic_life") or options.get("reward_clip"))


def reset_seed(seed: int, reset_count: int) -> int:
    """The seed of a gymnasium vector env's `reset_count`-th reset: `seed` first, then a fresh one
    derived from both, so each evaluation plays new episodes and a fixed seed plays the same ones."""
    if reset_count == 0:
        return seed
    return int(np.random.SeedSequence([seed, reset_count]).generate_state(1, np.uint32)[0])


# --- stepping ---

class _EnvpoolDirectIO:
    """envpool's `send`/`recv` without their per-call Python layers (dict and tree building, config
    lookups): about 60 us of a 120 us CartPole vector step on the CI CPU. It calls the same C++
    `_send`/`_recv` with the argument and result layouts read from the env once. Built only for
    single-player envs whose layout it recognises (`create` returns None otherwise, and the public
    API is used); tests check both give identical steps."""

    ACTION_KEYS = ["env_id", "players.env_id", "action"]
    STATE_KEYS = ("obs", "reward", "done", "trunc", "info:env_id")
    GAME_KEYS = ("info:reward", "info:terminated")  # Atari: the unclipped reward, game over

    def __init__(self, envs, env_ids: np.ndarray, game_info: bool = False):
        keys = list(envs._state_keys)
        self._obs, self._reward, self._done, self._trunc, self._env_id = (keys.index(k) for k in self.STATE_KEYS)
        self._game = tuple(keys.index(k) for k in self.GAME_KEYS) if game_info else None
        self._action_dtype = np.dtype(envs._spec._action_spec[-1][0])
        self._env_ids = env_ids  # int32, every env: the ids of the envs acted on, and their players
        self._send, self._recv = envs._send, envs._recv
        self.game_info: tuple[np.ndarray, np.ndarray] | None = None  # of the last recv, with game_info

    @classmethod
    def create(cls, envs, env_ids: np.ndarray, game_info: bool = False) -> _EnvpoolDirectIO | None:
        """`game_info`: each `recv` also leaves envpool's Atari game info in `self.game_info`."""
        try:
            needed = cls.STATE_KEYS + (cls.GAME_KEYS if game_info else ())
            fits = (list(envs._action_keys) == cls.ACTION_KEYS and all(k in envs._state_keys for k in needed)
                    and envs.config.get("max_num_players", 1) == 1)
            return cls(envs, env_ids, game_info) if fits else None
        except (AttributeError, TypeError, ValueError):  # another envpool version: use its public API
            return None

    def send(self, actions: np.ndarray) -> None:
        self._send([self._env_ids, self._env_ids, actions.astype(self._action_dtype, copy=False)])

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """obs, reward, terminated, truncated, env_id (the order the rows came back in)."""
        state = self._recv()
        trunc = state[self._trunc]
        if self._game is not None:
            self.game_info = (state[self._game[0]], state[self._game[1]])
        return state[self._obs], state[self._reward], state[self._done] & ~trunc, trunc, state[self._env_id]


class StepStaging:
    """One host buffer per step for reward, terminated and the observations (bytes: two float32
    rows, then the observations in the learner's layout, which so start 4-byte aligned), moved to
    the device in one copy and split there into views.

    On CUDA the buffer is pinned and the copy is non-blocking, so `recv()` does not wait for the
    train phase queued before it. Two buffers take turns, each guarded by an event recorded after
    its copy: the host rewrites one only after the copy out of it has run. On CPU one buffer, and
    the "copy to the device" is a numpy copy of it (the caller keeps a step's tensors past the
    next step), split in numpy: a torch slice costs several times a numpy one."""

    def __init__(self, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype, device: torch.device):
        self.device = device
        obs_np_dtype = torch.empty((), dtype=obs_dtype).numpy().dtype
        obs_bytes = num_envs * math.prod(obs_shape) * obs_np_dtype.itemsize
        cuda = device.type == "cuda"
        slots = 2 if cuda else 1
        self.buffers = [torch.empty(8 * num_envs + obs_bytes, dtype=torch.uint8, pin_memory=cuda)
                        for _ in range(slots)]
        self._events = [torch.cuda.Event() for _ in range(slots)] if cuda else []
        self._turn = 0
        # (byte range, dtype, shape) of each part, in the order `stage` returns them
        self._parts = ((slice(8 * num_envs, None), obs_dtype, (num_envs, *obs_shape)),
                       (slice(0, 4 * num_envs), torch.float32, (num_envs,)),
                       (slice(4 * num_envs, 8 * num_envs), torch.float32, (num_envs,)))
        self._np_parts = tuple((where, torch.empty((), dtype=dtype).numpy().dtype, shape)
                               for where, dtype, shape in self._parts)
        self._host_np = [b.numpy() for b in self.buffers]
        self._views = [self._split_np(b) for b in self._host_np]

    def _split_np(self, buffer: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(buffer[where].view(dtype).reshape(shape) for where, dtype, shape in self._np_parts)

    def stage(self, obs: np.ndarray, reward: np.ndarray | None = None, terminated: np.ndarray | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs [N, *obs_shape] (already in the learner's layout; any numeric dtype), reward and
        terminated [N] -> (obs, reward, terminated) on the device, float32 but obs. Without a
        reward (a reset) the last two are left as the buffer holds them."""
        turn = self._turn
        self._turn = (turn + 1) % len(self.buffers)
        if self._events:
            self._events[turn].synchronize()  # the copy out of this buffer two steps ago (none recorded: no wait)
        obs_np, reward_np, terminated_np = self._views[turn]
        np.copyto(obs_np, obs, casting="unsafe")
        if reward is not None:
            np.copyto(reward_np, reward, casting="unsafe")
            np.copyto(terminated_np, terminated, casting="unsafe")
        if self.device.type == "cpu":
            return tuple(torch.from_numpy(part) for part in self._split_np(self._host_np[turn].copy()))
        moved = self.buffers[turn].to(self.device, non_blocking=True)
        if self._events:
            self._events[turn].record()
        return tuple(moved[where].view(dtype).view(shape) for where, dtype, shape in self._parts)


def _to_learner_layout(obs: np.ndarray, layout: str) -> np.ndarray:
    """A vector env's observations [N, *raw shape] as a view in the learner's layout."""
    if layout == OBS_CHANNEL_LAST:
        return np.asarray(obs).transpose(0, 3, 1, 2)
    if layout == OBS_NO_CHANNEL:
        return np.asarray(obs)[:, None]
    return obs


class TorchVecEnv:
    """A vector env whose observations and rewards are tensors on `device`.

    Tracks episode returns and lengths per env; finished episodes are collected with
    `pop_finished_episodes()`. Each `reset()` starts fresh episodes, seeded: the first from `seed`,
    later ones from `reset_seed(seed, n)` (envpool, seeded once when made, does the same).

    `role` ("train" or "eval") picks the env options (`envpool_options`). Where those end the
    learner's episodes before the game's end or clip rewards (Atari training envs), the tracked
    episodes are the games: their unclipped score, summed over lives, and their length, to game
    over or the time limit.
    """

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int, device: torch.device, role: str = "train"):
        self.spec = spec
        self.num_envs = num_envs
        self.seed = seed
        self.device = device
        self.role = role
        self.options = envpool_options(spec, role)
        self._game_info = scores_whole_games(self.options)
        self._owns_envs = not isinstance(spec.env_fn, ReadyVectorEnv)
        self._envs = self._make(spec, num_envs, seed, self.options)
        self._resets = 0
        self._ended_last_step = np.zeros(num_envs, dtype=bool)
        self._reset_pending = False  # whether _ended_last_step has any True
        self._episode_return = np.zeros(num_envs, dtype=np.float64)
        self._episode_length = np.zeros(num_envs, dtype=np.int64)
        self._finished: list[tuple[int, float, int]] = []
        if not spec.discrete:
            self._low = np.asarray(spec.action_low, dtype=np.float32).reshape(spec.action_shape)
            self._high = np.asarray(spec.action_high, dtype=np.float32).reshape(spec.action_shape)
        self._staging = StepStaging(num_envs, spec.obs_shape, spec.obs_dtype, device)
        self._env_ids = np.arange(num_envs, dtype=np.int32)
        self._env_ids_bytes = self._env_ids.tobytes()
        self._direct = (_EnvpoolDirectIO.create(self._envs, self._env_ids, self._game_info)
                        if spec.backend == "envpool" else None)
        self._sent_once = False

    @staticmethod
    def _make(spec: EnvSpec, num_envs: int, seed: int, options: dict[str, Any]):
        import gymnasium as gym

        if spec.backend == "envpool":
            import envpool

            envs = envpool.make_gymnasium(spec.env_id, num_envs=num_envs, seed=seed, **options)
            check_autoreset_mode(envs, spec.env_id, required=False)
            return envs
        # copy=False: every observation is copied into the staging buffer anyway
        next_step = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP, "copy": False}
        if spec.backend == "gymnasium":
            envs = gym.make_vec(spec.env_id, num_envs=num_envs, vectorization_mode="sync", vector_kwargs=next_step)
        elif spec.backend == "callable":
            envs = gym.vector.SyncVectorEnv([spec.env_fn] * num_envs, **next_step)
        elif spec.backend == "vector":
            envs = spec.env_fn(num_envs)
            if envs.num_envs != num_envs:
                raise ConfigError(f"--num-envs: the vector env function of {spec.env_id} made {envs.num_envs} "
                                  f"envs when asked for {num_envs}")
        else:
            raise ValueError(f"unknown env backend {spec.backend!r}")
        check_autoreset_mode(envs, spec.env_id, required=True)
        envs.action_space.seed(seed)
        return envs

    def _in_env_order(self, order: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """envpool returns rows in the order the envs finished: put them back in env order."""
        if order.tobytes() == self._env_ids_bytes:  # ~5x cheaper than array_equal
            return arrays
        inverse = np.argsort(order)
        return tuple(a[inverse] for a in arrays)

    def reset(self) -> torch.Tensor:
        if self.spec.backend == "envpool":
            obs, info = self._envs.reset()
            (obs,) = self._in_env_order(np.asarray(info["env_id"]), obs)
        else:
            obs, _ = self._envs.reset(seed=reset_seed(self.seed, self._resets))
        self._resets += 1
        self._ended_last_step = np.zeros(self.num_envs, dtype=bool)  # a new array: VecSteps hold the old one
        self._reset_pending = False
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        return self._staging.stage(_to_learner_layout(obs, self.spec.obs_layout))[0]

    def actions_to_numpy(self, actions: torch.Tensor) -> np.ndarray:
        on_host = actions.device.type == "cpu" and not actions.requires_grad
        host = actions.numpy() if on_host else actions.detach().cpu().numpy()
        if self.spec.discrete:
            return host.astype(np.int64, copy=False)
        # Actions never leave the box, whatever the policy or the noise did.
        return np.clip(host.astype(np.float32, copy=False), self._low, self._high)

    def send(self, actions: torch.Tensor) -> None:
        """Start a step. envpool's threads step the envs while the caller does other work (a train
        phase, say) until `recv()`."""
        host = self.actions_to_numpy(actions)
        if self._direct is not None and self._sent_once:
            self._direct.send(host)
        elif self.spec.backend == "envpool":
            self._envs.send(host, self._env_ids)  # the first send goes through envpool's own checks
            self._sent_once = True
        else:
            self._pending_actions = host

    def recv(self) -> VecStep:
        """Finish the step started by `send()`."""
        if self.spec.backend == "envpool":
            if self._direct is not None:
                obs, reward, terminated, truncated, order = self._direct.recv()
                game = self._direct.game_info
            else:
                obs, reward, terminated, truncated, info = self._envs.recv()
                order = np.asarray(info["env_id"])
                game = (info["reward"], info["terminated"]) if self._game_info else None
            obs, reward, terminated, truncated, *game = self._in_env_order(order, obs, reward, terminated, truncated,
                                                                           *(game or ()))
        else:
            obs, reward, terminated, truncated, _ = self._envs.step(self._pending_actions)
            game = ()
        return self._record(obs, reward, terminated, truncated, *game)

    def step(self, actions: torch.Tensor) -> VecStep:
        self.send(actions)
        return self.recv()

    def _record(self, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                game_reward: np.ndarray | None = None, game_over: np.ndarray | None = None) -> VecStep:
        """`game_reward`, `game_over` (Atari envs that score whole games): the unclipped reward and
        whether the game is over; the episode statistics follow them. Without them the learner's
        episodes are the ones tracked."""
        # Every step of a 1-env TD3 run passes here: the usual case (no episode boundary) is
        # kept to a few whole-array operations.
        is_reset_step = self._ended_last_step  # never mutated: each step makes a new array
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        reward = np.asarray(reward, dtype=np.float32)
        ended = terminated | truncated  # the learner's episode ends: the next step is the auto-reset step
        if game_over is None:
            score, scored_end = reward, ended
        else:  # a game ends at game over or the time limit, which each end the learner's episode too
            score, scored_end = game_reward, np.asarray(game_over, dtype=bool) | truncated
        if self._reset_pending:
            real = ~is_reset_step
            self._episode_return[real] += score[real]
            self._episode_length[real] += 1
            ended &= real
            scored_end &= real  # (the same array as `ended`, without game info)
        else:
            self._episode_return += score
            self._episode_length += 1
        self._reset_pending = bool(np.count_nonzero(ended))
        if self._reset_pending and (scored_end is ended or np.count_nonzero(scored_end)):
            for i in np.flatnonzero(scored_end):
                self._finished.append((int(i), float(self._episode_return[i]), int(self._episode_length[i])))
            self._episode_return[scored_end] = 0.0
            self._episode_length[scored_end] = 0
        self._ended_last_step = ended
        next_obs, reward_t, terminated_t = self._staging.stage(_to_learner_layout(obs, self.spec.obs_layout),
                                                               reward, terminated)
        return VecStep(next_obs=next_obs, reward=reward_t, terminated=terminated_t,
                       truncated=truncated, is_reset_step=is_reset_step)

    def pop_finished_episodes(self) -> list[tuple[int, float, int]]:
        """(env index, return, length) of each episode finished since the last call."""
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        if self._owns_envs:
            self._envs.close()
