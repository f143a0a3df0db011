"""Frame stacks stored one frame per row, rebuilt at sample time.

An Atari observation is a stack of the S newest frames (envpool: S = 4, oldest first). Inside an
episode each step shifts one new frame in, so row t of an env stream needs to keep only its newest
frame: its stack is the newest frames of rows t-S+1 .. t. What envpool puts in a stack at the
start of an episode (measured on envpool 1.2.5, Breakout-v5; `tests/test_frame_stack.py` holds the
buffer to it bit for bit):
- after a real reset (game over, truncation, the first reset) all S frames are the reset frame
  repeated: frames from before the reset never leak in;
- after a life lost under `episodic_life=True` (a terminated=True end for the learner) the game
  goes on and so does the stack: the first observation of the new "episode" is the last one
  shifted by one frame, frames of the lost life included.
So each row stores its history h: how many rows before it its stack reaches back to (0 .. S-1);
the older positions repeat the frame of row t-h. h is min(h_prev + 1, S-1) along a stream, and 0
where a stack is all one frame repeated (a real reset; a continued stack whose frames all happen
to be equal rebuilds to the same bytes either way, so only rows that start an episode are tested).
"""

from __future__ import annotations

import numpy as np
import torch


def frame_rows(rows: torch.Tensor, history: torch.Tensor, stack: int, width: int | None = None) -> torch.Tensor:
    """Row ids [..., width] of the frames of each row's stack, oldest first (width = stack), or of
    its stack followed by the next row's frame (width = stack + 1: the stack of the next row of the
    same episode is positions 1 .. stack). `history` (int64, rows' shape): each row's h."""
    width = stack if width is None else width
    position = torch.arange(width, device=rows.device)
    first_real = (stack - 1 - history).unsqueeze(-1)  # positions before it repeat the frame of row t-h
    return rows.unsqueeze(-1) - (stack - 1) + torch.maximum(position, first_real)


def repeats_one_frame(stacks) -> np.ndarray | torch.Tensor:
    """Whether each [..., stack, frame_size] stack (numpy or torch) is one frame repeated."""
    same = stacks[..., :-1, :] == stacks[..., -1:, :]
    return same.reshape(*same.shape[:-2], -1).all(-1)


def history_lengths(previous, resets, stack: int):
    """h of c consecutive steps [c, N] (numpy or torch, as `resets`): h = 0 where `resets`, else
    min(h_prev + 1, stack - 1), from `previous` [N] (the h of the row before; -1 for none)."""
    steps = resets.shape[0]
    if isinstance(resets, torch.Tensor):
        step = torch.arange(steps, device=resets.device).unsqueeze(1)
        last_reset = torch.where(resets, step, -1 - previous.unsqueeze(0))
        last_reset = torch.cummax(last_reset, dim=0).values
        return torch.clamp(step - last_reset, max=stack - 1)
    step = np.arange(steps)[:, None]
    last_reset = np.maximum.accumulate(np.where(resets, step, -1 - previous[None, :]), axis=0)
    return np.minimum(step - last_reset, stack - 1)
