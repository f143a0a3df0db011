"""A one-line progress bar on stderr: steps, SPS, the last log row's returns, every metric the
algorithm reports and its exploration settings, ETA."""

from __future__ import annotations

import math
import sys
import time
from typing import Any


# Row entries the bar leaves out (it shows its own step count and SPS); every other number is shown.
BOOKKEEPING = frozenset({"env_step", "wall_s", "sps", "updates", "episodes", "episodic_length", "lr",
                         "action_entropy", "eval_return_std"})
LABELS = {"episodic_return": "return", "eval_return_mean": "eval", "epsilon": "eps", "exploration_noise": "noise",
          "mean_q": "q"}


class Progress:
    def __init__(self, total_steps: int, enabled: bool = True, min_interval_s: float = 0.5):
        self.total = total_steps
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.min_interval_s = min_interval_s if self.tty else 10.0
        self.t0 = time.perf_counter()
        self.last_print = -math.inf
        self.last_row: dict[str, Any] = {}

    def update(self, step: int, row: dict[str, Any] | None) -> None:
        if row is not None:
            self.last_row = row
        now = time.perf_counter()
        if not self.enabled or now - self.last_print < self.min_interval_s:
            return
        self.last_print = now
        elapsed = now - self.t0
        sps = step / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / sps if sps > 0 else math.inf
        frac = step / self.total
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        parts = [f"[{bar}] {step}/{self.total}", f"{sps:,.0f} SPS"]
        for key, value in self.last_row.items():
            if key not in BOOKKEEPING and isinstance(value, float) and math.isfinite(value):
                parts.append(f"{LABELS.get(key, key)} {value:.3g}")
        parts.append(f"ETA {eta:.0f}s" if math.isfinite(eta) else "ETA ?")
        line = " | ".join(parts)
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
