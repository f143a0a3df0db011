"""Checkpoint and resume: a run interrupted at a checkpoint and resumed ends with exactly the
weights, optimizer state and buffer of the same run left alone."""

import csv
import json
import os
import signal

import pytest
import torch

import fastrl.train as train_mod
from fastrl.buffer import ReplayBuffer
from fastrl.checkpoint import load_checkpoint
from fastrl.dqn import build_dqn
from fastrl.envs import lookup_spec
from fastrl.finite import first_nonfinite
from tests.counter_env import ENV_ID as COUNTER_ENV

# The counter env's observation carries the env seed; seeds of rebuilt envs exceed its Box bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*not within the observation space")


def small_run(run_dir, env="CartPole-v1", total=4000, every=2000, *extra, algo="dqn"):
    return ["--algo", algo, "--env", env, "--total-steps", str(total), "--num-envs", "4", "--checkpoint-every", str(every),
            "--checkpoint-buffer", "--learning-starts", "500", "--train-every", "1", "--updates-per-train", "2",
            "--batch-size", "32", "--hidden-sizes", "32", "32", "--buffer-size", "3000", "--eval-episodes", "2",
            "--log-every", "1000", "--lr-schedule", "linear", "--target-update", "hard", "--target-period", "50",
            "--device", "cpu", "--no-progress", "--run-dir", str(run_dir), *extra]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU reductions are bitwise reproducible at a fixed thread count
    yield
    torch.set_num_threads(threads)


def sigint_after_first_checkpoint(monkeypatch):
    """A real SIGINT, delivered right after the first periodic checkpoint is written."""
    real_save = train_mod.save_checkpoint
    saves = []

    def save_then_interrupt(path, payload):
        real_save(path, payload)
        saves.append(payload["counters"]["env_step"])
        if len(saves) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_interrupt)
    return saves


def tensors(tree, prefix=""):
    """Every tensor of a nested checkpoint, by dotted path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    out = {}
    for key, value in items:
        out.update(tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("algo,env", [("dqn", "CartPole-v1"), ("dqn", COUNTER_ENV), ("td3", "Pendulum-v1"),
                                      ("sac", "Pendulum-v1")],
                         ids=["dqn-envpool", "dqn-gymnasium", "td3-envpool", "sac-envpool"])
def test_interrupted_and_resumed_run_is_bit_identical(algo, env, tmp_path, monkeypatch, one_thread):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_mod.main(small_run(straight, env, algo=algo)) == 0

    with monkeypatch.context() as patch:
        saves = sigint_after_first_checkpoint(patch)
        assert train_mod.main(small_run(resumed, env, algo=algo)) == 130
    assert saves == [2000]  # stopped at the checkpoint, not written again
    assert load_checkpoint(resumed / "checkpoint.pt")["counters"]["env_step"] == 2000
    assert train_mod.main(["--resume", str(resumed)]) == 0

    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert a["counters"]["env_step"] == b["counters"]["env_step"] == 4000
    assert a["agent"]["updates_done"] == b["agent"]["updates_done"] > 0
    parts = ("agent", "buffer", "rng")
    ta, tb = tensors({k: a[k] for k in parts}), tensors({k: b[k] for k in parts})
    assert ta.keys() == tb.keys() and len(ta) > 20
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different

    # The resumed run appended to the same metrics: the same rows at the same steps, same losses.
    rows_a, rows_b = read_rows(straight), read_rows(resumed)
    assert [r["env_step"] for r in rows_a] == [r["env_step"] for r in rows_b] == ["1000", "2000", "3000", "4000"]
    assert rows_a[0].keys() == rows_b[0].keys()
    for column in rows_a[0].keys() - {"wall_s", "sps"}:  # every column but the clocks'
        assert [r[column] for r in rows_a] == [r[column] for r in rows_b], column


def test_checkpoint_cuts_leave_only_true_transitions(tmp_path):
    """Every stored transition goes from step t to step t + 1 of one episode, across four
    checkpoint cuts: the cut stores each env's last observation as a row of its own."""
    run = tmp_path / "run"
    assert train_mod.main(small_run(run, COUNTER_ENV, 1000, 200)) == 0
    state = load_checkpoint(run / "checkpoint.pt")
    spec = lookup_spec(COUNTER_ENV)
    buffer = ReplayBuffer(3000, 4, spec.obs_shape, spec.obs_dtype, spec.action_shape, spec.action_dtype, "cpu")
    buffer.load_state_dict(state["buffer"])
    batch = buffer.gather(buffer.sampleable_rows())  # observations are [episode id, t, env seed]
    assert len(batch.obs) > 800
    assert torch.equal(batch.next_obs[:, 0], batch.obs[:, 0])  # same episode...
    assert torch.equal(batch.next_obs[:, 2], batch.obs[:, 2])  # ...of the same env build
    assert torch.equal(batch.next_obs[:, 1], batch.obs[:, 1] + 1)  # the next step of it
    assert torch.equal(batch.rewards, batch.actions.reshape(-1).float() + batch.next_obs[:, 1])
    assert len(torch.unique(batch.obs[:, 2])) >= 5  # the envs were rebuilt at each of the 4 cuts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train_mod.main(small_run(run, COUNTER_ENV, 400, 200)) == 0
    return run


def one_error_line(capsys):
    """The one line the run printed after its start banner (if it got that far)."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("fastrl: ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("extra,flag,hint", [
    (["--lr", "0.1"], "--lr", "cannot be changed when resuming"),
    (["--run-dir", "elsewhere"], "--run-dir", "cannot be changed when resuming"),
    (["--total-steps", "100"], "--total-steps", "already at env step 400"),
])
def test_resume_rejects_flags_that_change_the_run(finished_run, extra, flag, hint, capsys):
    assert train_mod.main(["--resume", str(finished_run), *extra]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"python -m fastrl.train: error: {flag}") and hint in line, line


def test_resume_rejects_a_config_file(finished_run, tmp_path, capsys):
    (tmp_path / "c.toml").write_text("lr = 0.1\n")
    assert train_mod.main(["--resume", str(finished_run), "--config", str(tmp_path / "c.toml")]) == 2
    assert "--config: cannot be combined with --resume" in one_error_line(capsys)


def test_new_run_refuses_a_folder_that_holds_a_run(finished_run, capsys):
    assert train_mod.main(["--env", COUNTER_ENV, "--run-dir", str(finished_run)]) == 2
    assert "--run-dir" in one_error_line(capsys)


def test_resuming_a_finished_run_does_nothing(finished_run, capsys):
    before = (finished_run / "checkpoint.pt").stat().st_mtime_ns
    assert train_mod.main(["--resume", str(finished_run)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (finished_run / "checkpoint.pt").stat().st_mtime_ns == before


def test_resume_can_extend_total_steps(tmp_path):
    run = tmp_path / "run"
    assert train_mod.main(small_run(run, COUNTER_ENV, 400, 200)) == 0
    assert train_mod.main(["--resume", str(run), "--total-steps", "600", "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_step"] == 600
    assert json.loads((run / "config.json").read_text())["total_steps"] == 600
    steps = [int(r["env_step"]) for r in read_rows(run)]
    assert steps == sorted(steps) and steps[-1] == 600 and 400 in steps


def test_resume_without_buffer_refills_it_before_updating(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = [a for a in small_run(run, COUNTER_ENV, 2000, 1000) if a != "--checkpoint-buffer"]
    with monkeypatch.context() as patch:
        sigint_after_first_checkpoint(patch)
        assert train_mod.main(args) == 130
    first = load_checkpoint(run / "checkpoint.pt")
    assert "buffer" not in first and first["counters"]["env_step"] == 1000
    assert train_mod.main(["--resume", str(run)]) == 0
    assert "refilling it for 500 steps" in capsys.readouterr().err
    last = load_checkpoint(run / "checkpoint.pt")
    # 500 of the remaining 1000 steps refill the buffer, then 2 updates per vector step of 4 envs
    assert last["agent"]["updates_done"] - first["agent"]["updates_done"] == 2 * (1000 - 500) // 4 + 2


def poison(after_calls, how):
    """An agent builder whose update function misbehaves on call `after_calls`."""
    def build(spec, cfg, device, use_compile):
        agent = build_dqn(spec, cfg, device, use_compile)
        clean, calls = agent.update_fn, [0]

        def update_fn(obs, actions, rewards, next_obs, terminated, *replay):
            calls[0] += 1
            if calls[0] == after_calls and how == "reward":
                rewards = rewards * float("nan")
            out = clean(obs, actions, rewards, next_obs, terminated, *replay)
            if calls[0] == after_calls and how == "weight":
                next(agent.q.parameters()).data.view(-1)[0] = float("inf")
            return out

        agent.update_fn = update_fn
        return agent
    return build


def test_nan_in_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(train_mod, "build_agent", poison(1000, "reward"))  # ~env step 2500
        assert train_mod.main(small_run(run)) == 3
    line = one_error_line(capsys)
    assert "non-finite loss (nan) at env step 3000" in line, line
    assert "last good checkpoint (env step 2000) is kept" in line and "--resume" not in line
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["counters"]["env_step"] == 2000
    assert all(torch.isfinite(t).all() for t in tensors(state["agent"]).values() if t.is_floating_point())
    assert json.loads((run / "summary.json").read_text())["exit_code"] == 3
    # The kept checkpoint is usable: without the poison, the run resumes to its end.
    assert train_mod.main(["--resume", str(run)]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_step"] == 4000


def test_nan_in_weights_is_never_written_to_a_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    # Updates start at vector step 124 (env step 500), 2 per vector step: call 752 is the last
    # before the checkpoint at env step 2000, so its loss is finite and only the weights are not.
    monkeypatch.setattr(train_mod, "build_agent", poison(752, "weight"))
    assert train_mod.main(small_run(run)) == 3
    line = one_error_line(capsys)
    assert "non-finite values in q.weights.0 at env step 2000" in line, line
    assert "no checkpoint had been written yet" in line
    assert not (run / "checkpoint.pt").exists()


def test_first_nonfinite_names_the_tensor():
    state = {"q": {"0.weight": torch.ones(2), "0.bias": torch.tensor([0.0, float("-inf")])},
             "generator": torch.zeros(3, dtype=torch.uint8), "updates_done": 5}
    assert first_nonfinite(state) == "q.0.bias"
    assert first_nonfinite({"q": {"w": torch.ones(3)}}) is None
