"""Train DQN on CartPole, watch each log window, and stop once a greedy evaluation reaches 150."""

import fastrl

config = fastrl.make_config(algo="dqn", env="CartPole-v1", total_steps=20_000, eval_every=2_000,
                            log_every=2_000, progress=False)


def watch(row: dict) -> bool:
    """Called once per log window with the row written to metrics.csv; False stops the run."""
    print(f"env step {row['env_step']}: training return {row['episodic_return']:.1f}, "
          f"greedy evaluation {row['eval_return_mean']:.1f}")
    return not row["eval_return_mean"] >= 150  # NaN (no evaluation in this window) keeps going


summary = fastrl.train(config, callback=watch)
if summary["interrupted"]:  # stopped by the callback (or Ctrl-C): a checkpoint was written
    print(f"stopped at env step {summary['env_steps']}; continue with fastrl.resume({summary['run_dir']!r})")
