"""Schedules as pure functions of a step counter."""

from __future__ import annotations


def linear(start: float, end: float, duration: float, step: float) -> float:
    """`start` at step 0, `end` from step `duration` on, straight line between."""
    if duration <= 0:
        return end
    frac = min(max(step / duration, 0.0), 1.0)
    return start + frac * (end - start)


def robbins_monro(lr0: float, k0: float, power: float, k: float) -> float:
    """α_k = α_0 / (1 + k/k0)^p. For 0.5 < p <= 1, Σα_k diverges (the iterates can reach any
    point) and Σα_k² converges (the noise averages out): the Robbins–Monro conditions."""
    return lr0 / (1.0 + k / k0) ** power


def learning_rate(schedule: str, lr0: float, update: int, total_updates: int, *, end_fraction: float = 0.0,
                  k0: float = 1_000.0, power: float = 0.75) -> float:
    if schedule == "constant":
        return lr0
    if schedule == "linear":
        return linear(lr0, lr0 * end_fraction, total_updates, update)
    if schedule == "robbins-monro":
        return robbins_monro(lr0, k0, power, update)
    raise ValueError(f"unknown lr schedule {schedule!r}")


# --- when the loop trains: one predicate, shared by the loop and the schedules that plan for it ---

# A mini-batch needs a sampleable row. While vector step v is in flight the buffer holds the rows
# of steps 0 .. v-1, and a row is sampleable once the n observations after it are written (1-step:
# its next observation): the first train phase can come at vector step n + 1.
def first_train_vector_step(n_step: int) -> int:
    return n_step + 1


def train_phase_due(vector_step: int, num_envs: int, train_every: int, learn_from: int, n_step: int = 1) -> bool:
    """Whether the loop runs a train phase while vector step `vector_step` (0-based) is in flight:
    every `train_every` vector steps, once the step under way reaches env step `learn_from` and
    the buffer holds an `n_step`-return row."""
    return (vector_step >= first_train_vector_step(n_step) and (vector_step + 1) * num_envs >= learn_from
            and (vector_step + 1) % train_every == 0)


def planned_updates(cfg) -> int:
    """Updates an uninterrupted run makes: `updates_per_train` per vector step where
    `train_phase_due` holds (counted in closed form). The linear lr schedule ends here."""
    last = cfg.num_vector_steps  # vector steps are 0 .. last-1; count u = step + 1 in [first, last]
    first = max(first_train_vector_step(cfg.n_step) + 1, -(-cfg.learning_starts // cfg.num_envs))
    phases = max(last // cfg.train_every - (first - 1) // cfg.train_every, 0)
    return max(phases * cfg.updates_per_train, 1)
