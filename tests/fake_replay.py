"""Fake vector-env streams with envpool's auto-reset and frame-stack semantics, and plain-Python
references for what a replay buffer must return from them.

A stream is what the trainer hands `ReplayBuffer.add` step by step: the observation each env acted
on, the action, the reward, terminated, and valid (False for the auto-reset step after an episode
end, which pays nothing and returns the first observation of the next episode).

Frame stacks are built as envpool's Atari builds them (measured on envpool 1.2.5): a step shifts
one new frame in; a real reset (truncation, game over) repeats the reset frame S times; the reset
after a life lost (terminated under episodic_life) keeps shifting, so the old life's frames stay.
This is a reimplementation, for streams with many more boundaries than a real game gives in a
test's time; `tests/test_frame_stack.py` also checks the buffer against envpool itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Stream:
    obs: np.ndarray  # [T, N, *obs_shape]
    actions: np.ndarray  # [T, N] int64
    rewards: np.ndarray  # [T, N] float32
    terminated: np.ndarray  # [T, N] float32
    valid: np.ndarray  # [T, N] bool

    @property
    def num_steps(self) -> int:
        return self.valid.shape[0]


def fake_stream(seed: int, num_steps: int, num_envs: int, frame_stack: int = 1, p_end: float = 0.12,
                frame_shape: tuple[int, ...] = (2, 2, 3)) -> Stream:
    """Random episodes: each real step ends in a termination (half of them life losses, which keep
    the stack going) or a truncation with probability p_end. frame_stack = 1: float observations
    of shape (3,); otherwise uint8 stacks of shape (frame_stack * frame_shape[0], *frame_shape[1:])."""
    rng = np.random.default_rng(seed)
    stacked = frame_stack > 1
    obs_shape = (frame_stack * frame_shape[0], *frame_shape[1:]) if stacked else (3,)
    obs = np.zeros((num_steps, num_envs, *obs_shape), dtype=np.uint8 if stacked else np.float32)
    actions = rng.integers(0, 5, (num_steps, num_envs))
    rewards = rng.normal(size=(num_steps, num_envs)).astype(np.float32)
    terminated = np.zeros((num_steps, num_envs), dtype=np.float32)
    valid = np.ones((num_steps, num_envs), dtype=bool)

    def new_frame():
        return rng.integers(0, 256, frame_shape, dtype=np.uint8)

    for env in range(num_envs):
        frames = [new_frame()] * frame_stack  # after the first reset
        current = rng.normal(size=3)
        ended, life_lost = False, False
        for t in range(num_steps):
            obs[t, env] = np.concatenate(frames) if stacked else current
            if ended:  # the auto-reset step
                valid[t, env], rewards[t, env] = False, 0.0
                frame = new_frame()
                frames = frames[1:] + [frame] if life_lost else [frame] * frame_stack
                ended = False
            else:
                roll = rng.random()
                if roll < p_end / 2:
                    terminated[t, env] = 1.0
                    ended, life_lost = True, rng.random() < 0.5
                elif roll < p_end:  # truncated: a real reset follows
                    ended, life_lost = True, False
                frames = frames[1:] + [new_frame()]
            current = rng.normal(size=3)
    return Stream(obs, actions, rewards, terminated, valid)


def nstep_reference(stream: Stream, env: int, t: int, n: int, gamma: float) -> tuple[float, float, float, int]:
    """(return, discount, terminated, m) of the window of row (env, t), one transition at a time."""
    ret, m, term = 0.0, 0, 0.0
    for k in range(n):
        u = t + k
        if k > 0 and (not stream.valid[u, env] or stream.terminated[u - 1, env]):
            break
        ret += gamma ** k * float(stream.rewards[u, env])
        m, term = k + 1, float(stream.terminated[u, env])
    return ret, gamma ** m, term, m


def row_times(rows: np.ndarray, stride: int, lead: int, steps: int, written: int) -> tuple[np.ndarray, np.ndarray]:
    """(env, time step) of buffer rows, from the layout: env-major streams of `stride` rows whose
    slot 0 is at `lead`; slot s holds the newest time step t < written with t % steps == s."""
    env, slot = rows // stride, rows % stride - lead
    return env, slot + ((written - 1 - slot) // steps) * steps


def expected_sampleable(stream: Stream, written: int, steps: int, lead: int, n: int) -> set[tuple[int, int]]:
    """(env, t) of every row that must be sampleable after `written` steps: a real transition
    whose n-step window is written and whose stack's slots are not being overwritten."""
    first = max(0, written - steps + lead)
    return {(e, t) for t in range(first, written - n) for e in range(stream.valid.shape[1]) if stream.valid[t, e]}
