"""Checkpoints: written atomically (temp file + rename), loadable with `weights_only=True`.

A training checkpoint holds the resolved config, the agent (online and target weights, optimizer,
update counter, exploration generator), optionally the replay buffer, the global RNG states, the
loop's counters and the env's spec (observation shape and dtype, action space: what a policy needs
to act without building the env; `fastrl.policy`). Env state cannot be saved (envpool has no
serialization), so a checkpoint is only ever written at a point where the envs are (re)built from
`env_seed(seed, env_step)`: see `fastrl.train` for how episodes are cut there.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastrl.envs import EnvSpec
from fastrl.settings import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` so that `path` always holds either the old or the new checkpoint, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_run_checkpoint(run_dir: str | Path, flag: str = "--resume", name: str = CHECKPOINT_NAME) -> dict[str, Any]:
    """The checkpoint `name` of a run folder (a data-parallel run's other ranks write their own,
    `fastrl.distributed.checkpoint_name`), or a one-line ConfigError naming `flag`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{flag}: no such run folder {str(run_dir)!r}")
    path = run_dir / name
    if not path.is_file():
        raise ConfigError(f"{flag}: {str(run_dir)!r} holds no {name} (a run writes one every "
                          f"--checkpoint-every env steps and when it ends or is interrupted)")
    try:
        state = load_checkpoint(path)
    except Exception as exc:  # truncated file, foreign pickle, newer torch: all mean "cannot use it"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{flag}: cannot read {str(path)!r}: {reason[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "counters" not in state:
        raise ConfigError(f"{flag}: {str(path)!r} is not a fastrl training checkpoint (format {FORMAT})")
    return state


@dataclass
class RunCounters:
    """Where the loop stands; everything else that the loop carries is flushed at a checkpoint."""

    env_step: int = 0
    vector_step: int = 0  # vector steps completed
    last_eval_step: int = 0
    best_eval: float = -math.inf
    eval_returns: list[float] = field(default_factory=list)
    wall_s: float = 0.0  # wall time of all earlier sessions of this run


def env_seed(seed: int, env_step: int) -> int:
    """Seed of the vector env built at `env_step`: the run's seed at the start, then a fresh,
    reproducible stream for each segment between checkpoints."""
    if env_step == 0:
        return seed
    # < 2**30: envpool and gymnasium seed env i with seed + i, which must stay a 32-bit int
    return int(np.random.SeedSequence([seed, env_step]).generate_state(1)[0] % 2**30)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 key as a tensor: weights_only loading accepts tensors, not ndarrays
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    key = state["numpy_key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_payload(config: dict[str, Any], counters: RunCounters, agent_state: dict[str, Any],
                     buffer_state: dict[str, Any] | None, spec: EnvSpec | None = None) -> dict[str, Any]:
    payload = {"format": FORMAT, "config": config, "counters": dataclasses.asdict(counters),
               "agent": agent_state, "rng": rng_state()}
    if buffer_state is not None:
        payload["buffer"] = buffer_state
    if spec is not None:
        payload["env_spec"] = spec_payload(spec)
    return payload


def _is_plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def spec_payload(spec: EnvSpec) -> dict[str, Any]:
    """The spec's fields as values `weights_only` loading accepts: dtypes by name; a field holding
    code (a user's env function) is left out, as no checkpoint can hold it."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, torch.dtype):
            out[f.name] = str(value).removeprefix("torch.")
        elif _is_plain(value):
            out[f.name] = value
    return out


def made_by_env_fn(saved_spec: dict[str, Any] | None) -> bool:
    """Whether a checkpoint's env spec (`state.get("env_spec")`) is of an env made by a user's
    `env_fn` (the Python API's), which no checkpoint can hold: such a run is resumed and evaluated
    from Python, given the env again."""
    return saved_spec is not None and saved_spec.get("backend") in ("callable", "vector")


def spec_from_payload(saved: dict[str, Any], flag: str) -> EnvSpec:
    """The EnvSpec a checkpoint saved. Fields this version does not know are dropped; fields added
    since take their defaults."""
    known = {f.name: f for f in dataclasses.fields(EnvSpec)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}
    for name, value in values.items():
        if "dtype" in str(known[name].type):
            values[name] = getattr(torch, str(value), None)
            if not isinstance(values[name], torch.dtype):
                raise ConfigError(f"{flag}: the checkpoint's env spec names an unknown dtype {value!r}")
    try:
        return EnvSpec(**values)
    except TypeError as exc:  # a required field missing
        raise ConfigError(f"{flag}: the checkpoint's env spec is incomplete ({exc})") from None
