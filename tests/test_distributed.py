"""Data-parallel training on 2 CPU ranks (gloo): the ranks' averaged update is the update on the
union of their batches; their weights stay bit-identical; a SIGINT to torchrun stops both at the
same step with checkpoints that resume with 2 ranks to the end; a signal to one rank stops both; a
killed or hung rank makes the other exit within --collective-timeout. And a plain run stays plain.

The ranks are real processes, started the way torchrun starts them (its env vars) or by torchrun
itself (`python -m torch.distributed.run --standalone`, which picks a free port). Every process
started here is waited for with a timeout and killed, by its id, if it outlives the test.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fastrl.train as train_mod
from fastrl import distributed
from fastrl.checkpoint import load_checkpoint
from fastrl.config import ConfigError
from fastrl.interrupts import StopRequest
from tests import distributed_worker as worker

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10  # --collective-timeout of the runs here, seconds
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_args(run_dir, total, *extra):
    """A tiny CartPole DQN: 4 envs (2 per rank), an update per vector step, a checkpoint every 1000 steps."""
    return ["--env", "CartPole-v1", "--total-steps", str(total), "--num-envs", "4", "--checkpoint-every", "1000",
            "--checkpoint-buffer", "--learning-starts", "200", "--train-every", "1", "--updates-per-train", "1",
            "--batch-size", "32", "--hidden-sizes", "32", "--buffer-size", "10000", "--eval-episodes", "3",
            "--log-every", "500", "--device", "cpu", "--no-progress", "--collective-timeout", str(TIMEOUT),
            "--run-dir", str(run_dir), *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """The processes a test starts; whatever still runs at the end is killed, children first
    (torchrun's workers run in sessions of their own, so they are found by parent id)."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def popen(self, args, env=None) -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV,
                                cwd=ROOT)
        self.started.append(proc)
        return proc

    def ranks(self, module: str, *args: str, world: int = 2) -> list[subprocess.Popen]:
        """`python -m MODULE ARGS` as `world` ranks, with the env vars torchrun would set."""
        port = str(free_port())
        return [self.popen([sys.executable, "-m", module, *args],
                           env={**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(world),
                                "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(world)]

    def torchrun(self, *args: str) -> subprocess.Popen:
        return self.popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "fastrl.train", *args])

    def kill_all(self):
        for proc in self.started:
            for pid in [*children(proc.pid), proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            proc.wait(timeout=30)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields after the name: state, ppid, ...
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.kill_all()


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for(condition, procs_alive: list[subprocess.Popen], timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for p in procs_alive:
            assert p.poll() is None, f"exited early ({p.returncode}): {p.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def metric_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rank_states(run_dir: Path) -> list[dict]:
    return [load_checkpoint(run_dir / distributed.checkpoint_name(r)) for r in range(2)]


def assert_replicas_identical(states: list[dict]) -> None:
    a, b = (distributed.replicated_tensors(s["agent"]) for s in states)
    assert len(a) == len(b) > 5
    assert all(torch.equal(x, y) for x, y in zip(a, b)), "the ranks' weights differ"
    assert states[0]["agent"]["updates_done"] == states[1]["agent"]["updates_done"] > 0
    assert states[0]["counters"]["env_step"] == states[1]["counters"]["env_step"]
    # ...while each rank explored, stored and sampled on its own
    assert not torch.equal(states[0]["agent"]["generator"], states[1]["agent"]["generator"])
    assert not torch.equal(states[0]["buffer"]["frames"], states[1]["buffer"]["frames"])


# --- the update ---

def test_averaged_update_equals_the_update_on_the_union_of_the_batches(procs, tmp_path):
    for p in procs.ranks("tests.distributed_worker", str(tmp_path)):
        code, err = finish(p, timeout=120)
        assert code == 0, err[-3000:]
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    torch.set_num_threads(1)
    for case in worker.CASES:
        torch.manual_seed(1000)  # rank 0's seed: its weights are the ones broadcast
        spec, agent = worker.build(case)
        start = worker.weights(agent)
        b0, b1 = worker.batch_for(spec, 0), worker.batch_for(spec, 1)
        union = type(b0)(*(torch.cat((getattr(b0, f), getattr(b1, f))) for f in
                           ("obs", "actions", "rewards", "next_obs", "terminated")))
        agent.update(union)
        expected = worker.weights(agent)
        r0, r1 = results[0][case], results[1][case]
        assert all(torch.equal(a, b) for a, b in zip(r0["start"], start)), f"{case}: broadcast"
        assert all(torch.equal(a, b) for a, b in zip(r1["start"], start)), f"{case}: broadcast"
        assert all(torch.equal(a, b) for a, b in zip(r0["after"], r1["after"])), f"{case}: ranks differ"
        if case in worker.OWN_NOISE:
            assert sum(not torch.equal(a, b) for a, b in zip(r0["after"], start)) >= 4, f"{case}: too little moved"
            continue
        moved = [not torch.equal(a, b) for a, b in zip(expected, start)]
        assert sum(moved) >= 4, f"{case}: the update moved too little to compare"
        for got, want in zip(r0["after"], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{case}")
    for r in range(2):
        assert "the ranks' weights differ" in results[r]["mismatch"], results[r]["mismatch"]


# --- runs: stopping together, resuming, losing a rank ---

def test_sigint_to_torchrun_stops_both_ranks_at_one_step_and_resumes_with_two(procs, tmp_path, capsys):
    run, total = tmp_path / "run", 3000
    launcher = procs.torchrun(*run_args(run, total))
    wait_for(lambda: all((run / distributed.checkpoint_name(r)).exists() for r in range(2)), [launcher],
             what="the first checkpoints")
    launcher.send_signal(signal.SIGINT)  # torchrun passes it on to both ranks
    code, err = finish(launcher)
    assert code != 0 and "interrupted by SIGINT at env step" in err, err[-3000:]
    assert "Traceback" not in err.split("interrupted by SIGINT")[0], err[-3000:]
    states = rank_states(run)
    stopped = states[0]["counters"]["env_step"]
    assert 1000 <= stopped < total and stopped % 4 == 0  # mid-run, after a whole vector step of both ranks
    assert_replicas_identical(states)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["env_steps"] == stopped and summary["world_size"] == 2
    assert summary["batch_size_per_rank"] == 16

    # Another world size is refused, in one line, before anything is built.
    assert train_mod.main(["--resume", str(run)]) == 2  # this process: one rank
    assert capsys.readouterr().err.strip().splitlines() == [
        f"python -m fastrl.train: error: --resume: {str(run)!r} was trained with 2 rank(s) and this launch has 1; "
        f"resume it with torchrun with 2 processes in all (e.g. torchrun --nproc-per-node 2 -m fastrl.train "
        f"--resume {run})"]

    for rank in procs.ranks("fastrl.train", "--resume", str(run)):
        code, err = finish(rank)
        assert code == 0, err[-3000:]
    states = rank_states(run)
    assert states[0]["counters"]["env_step"] == total
    assert_replicas_identical(states)  # bit-identical after the whole run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_env_step"] == stopped and not summary["interrupted"]
    rows = metric_rows(run)
    steps = [int(r["env_step"]) for r in rows]
    assert steps == sorted(set(steps)) and stopped in steps and steps[-1] == total
    # the rows pool both ranks: 4 envs' episodes, and the returns of all 3 eval episodes
    assert sum(int(r["episodes"]) for r in rows) > 2 * sum(1 for r in rows)
    assert rows[-1]["eval_return_mean"] != ""


def test_a_signal_to_one_rank_stops_both_at_the_same_step(procs, tmp_path):
    run = tmp_path / "run"
    ranks = procs.ranks("fastrl.train", *run_args(run, 10**6))
    wait_for(lambda: all((run / distributed.checkpoint_name(r)).exists() for r in range(2)), ranks,
             what="the first checkpoints")
    ranks[1].send_signal(signal.SIGTERM)  # rank 0 gets none: it stops because rank 1 asked
    (code0, err0), (code1, err1) = finish(ranks[0]), finish(ranks[1])
    assert code0 == code1 == 143, (err0[-2000:], err1[-2000:])
    assert "interrupted by SIGTERM" in err0.strip().splitlines()[-1]
    assert err1.strip() == "", err1  # rank 0 speaks for both
    states = rank_states(run)
    assert 1000 <= states[0]["counters"]["env_step"] < 2000
    assert_replicas_identical(states)


@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGSTOP, marks=pytest.mark.slow)],
                         ids=["killed", "hung"])
def test_a_lost_rank_makes_the_other_exit_within_the_timeout(sig, procs, tmp_path):
    run = tmp_path / "run"
    ranks = procs.ranks("fastrl.train", *run_args(run, 10**6))
    wait_for(lambda: all((run / distributed.checkpoint_name(r)).exists() for r in range(2)), ranks,
             what="training to be under way")
    ranks[1].send_signal(sig)
    t_lost = time.monotonic()
    code, err = finish(ranks[0], timeout=TIMEOUT + 60)
    waited = time.monotonic() - t_lost
    assert code == train_mod.EXIT_PEER_LOST, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("python -m fastrl.train: error: rank 0: ") and "failed" in line, line
    assert f"--collective-timeout {TIMEOUT} s" in line and "checkpoint (env step" in line, line
    if sig == signal.SIGKILL:
        assert waited < TIMEOUT, waited  # its socket closed: noticed at the next collective
    else:
        assert TIMEOUT - 1 < waited < TIMEOUT + 30, waited  # alive but silent: the timeout ends the wait


# --- a plain run, and the pieces ---

def test_a_plain_run_makes_no_process_group(tmp_path, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a plain run started torch.distributed")

    monkeypatch.setattr(torch.distributed, "init_process_group", refuse)
    run = tmp_path / "run"
    assert train_mod.main(run_args(run, 600)) == 0
    assert not torch.distributed.is_initialized() and distributed._group is None
    assert sorted(p.name for p in run.glob("checkpoint*")) == ["checkpoint.pt"]
    assert load_checkpoint(run / "checkpoint.pt")["world_size"] == 1
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1


MASTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("environ,world", [
    ({}, distributed.SINGLE),
    ({"WORLD_SIZE": "1", "RANK": "0"}, distributed.SINGLE),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", **MASTER}, distributed.World(3, 4, 1)),
])
def test_world_from_env(environ, world):
    assert distributed.world_from_env(environ) == world


@pytest.mark.parametrize("environ,first", [
    ({"WORLD_SIZE": "two", **MASTER}, "WORLD_SIZE: must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2", **MASTER}, "WORLD_SIZE / RANK: need 0 <= RANK < WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "1"}, "MASTER_ADDR: WORLD_SIZE=2 is set but MASTER_ADDR not"),
])
def test_world_from_env_refuses_bad_values_in_one_line(environ, first):
    with pytest.raises(ConfigError, match="^" + first.replace("(", r"\(").replace(")", r"\)")) as exc:
        distributed.world_from_env(environ)
    assert "\n" not in str(exc.value)


def test_rank_seeds_are_the_run_seed_on_rank_0_and_distinct_elsewhere():
    seeds = [distributed.rank_seed(7, r) for r in range(64)]
    assert seeds[0] == 7 and len(set(seeds)) == 64 and all(0 <= s < 2**30 for s in seeds)
    assert distributed.rank_seed(8, 1) != seeds[1]


def test_episode_shares_add_up():
    for episodes in range(1, 13):
        for size in range(1, 5):
            shares = [distributed.episode_share(episodes, distributed.World(r, size)) for r in range(size)]
            assert sum(shares) == episodes and max(shares) - min(shares) <= 1


def test_each_rank_holds_its_share_and_the_run_keeps_its_settings():
    cfg = train_mod.resolve({})  # the CartPole preset: 8 envs, batch 128, buffer 50k
    mine = distributed.rank_share(cfg, distributed.World(1, 4))
    assert (mine.num_envs, mine.batch_size, mine.buffer_size) == (2, 32, 12_500)
    assert (mine.total_steps, mine.learning_starts, mine.updates_per_train) == (60_000, 1_000, 64)
    assert distributed.rank_share(cfg, distributed.SINGLE) is cfg
    distributed.check_settings(distributed.World(0, 8), cfg)
    with pytest.raises(ConfigError, match="^--num-envs: 8 envs do not split evenly over 3 ranks"):
        distributed.check_settings(distributed.World(0, 3), cfg)
    with pytest.raises(ConfigError, match="^--batch-size: 100 mini-batch rows do not split evenly over 8 ranks"):
        distributed.check_settings(distributed.World(0, 8), train_mod.resolve({"batch_size": 100}))


def test_checksum_sees_every_bit_and_every_position():
    a = torch.randn(1000)
    same = distributed.checksum([a.clone()])
    assert distributed.checksum([a]) == same
    nudged = a.clone()
    nudged[500] = float(np.nextafter(np.float32(nudged[500].item()), np.float32(np.inf)))
    swapped = a.clone()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert distributed.checksum([nudged]) != same and distributed.checksum([swapped]) != same


def test_plain_run_helpers_do_nothing_collective():
    stop = StopRequest()
    assert distributed.agree_stop(distributed.SINGLE, stop, 0) is stop
    assert distributed.from_main(distributed.SINGLE, "x") == "x"
    grads = [torch.ones(3)]
    distributed.average_gradients_(grads)
    assert torch.equal(grads[0], torch.ones(3))


def test_settings_a_data_parallel_run_refuses():
    cfg = train_mod.resolve({"cuda_graph": True})
    with pytest.raises(ConfigError, match="^--cuda-graph: not available with 2 ranks"):
        distributed.check_settings(distributed.World(0, 2), cfg)
    with pytest.raises(ConfigError, match=r"^--resume: 'r' was trained with 2 rank\(s\) and this launch has 1"):
        distributed.rank_resume_state(distributed.SINGLE, "r", {"world_size": 2, "counters": {"env_step": 0}})


def test_a_plain_run_leaves_compiled_updates_whole(monkeypatch):
    """In a plain run the gradient average is a check torch.compile traces away: the only graph
    break in a compiled clip + step is the fused Adam step's own. With a process group, the
    (eager) all_reduce breaks it before the clip."""
    from fastrl.fused_adam import FusedAdam
    from fastrl.learner import clip_and_step

    grads = torch.ones(4)
    optimizer = FusedAdam([torch.zeros(4)], lr=0.1, grads=[grads])

    def update(g):  # work before the step, as an update has (its backward)
        g.mul_(0.5)
        return clip_and_step(optimizer, 1.0)

    def breaks() -> list[str]:
        torch._dynamo.reset()
        try:
            return [str(r.reason) for r in torch._dynamo.explain(update)(grads).break_reasons]
        finally:
            torch._dynamo.reset()

    plain = breaks()
    assert len(plain) == 1 and "FusedAdam.step" in plain[0], plain
    monkeypatch.setattr(distributed, "_group", distributed._Group(distributed.World(0, 2), torch.device("cpu"), 1.0))
    monkeypatch.setattr(distributed, "_all_reduce_mean_", torch.compiler.disable(lambda grads, size: None))
    grouped = breaks()
    assert any("FusedAdam.step" not in r for r in grouped), grouped  # the all_reduce's break


def test_resume_refuses_rank_checkpoints_of_different_steps(tmp_path):
    """A rank that died while the checkpoints were written leaves files of two steps: refused."""
    from fastrl.checkpoint import FORMAT, save_checkpoint

    save_checkpoint(tmp_path / "checkpoint-rank1.pt", {"format": FORMAT, "counters": {"env_step": 1000}})
    main_state = {"world_size": 2, "counters": {"env_step": 2000}}
    with pytest.raises(ConfigError, match="^--resume: checkpoint-rank1.pt is at env step 1000 but checkpoint.pt at 2000"):
        distributed.rank_resume_state(distributed.World(1, 2), tmp_path, main_state)
    assert distributed.rank_resume_state(distributed.World(0, 2), tmp_path, main_state) is main_state


def test_the_api_refuses_to_resume_a_torchrun_run_in_one_process(tmp_path):
    """fastrl.resume is one process: a run trained on 2 ranks (2 replay shards) must not continue on
    rank 0's shard alone with the run's global settings."""
    import fastrl
    from fastrl.checkpoint import save_checkpoint
    from tests.counter_env import ENV_ID as COUNTER_ENV

    run = tmp_path / "run"
    fastrl.train(fastrl.make_config(env=COUNTER_ENV, run_dir=str(run), total_steps=400, num_envs=4,
                                    learning_starts=100, batch_size=16, buffer_size=1000, hidden_sizes=[16],
                                    eval_episodes=2, log_every=200, device="cpu", progress=False))
    state = load_checkpoint(run / "checkpoint.pt")
    save_checkpoint(run / "checkpoint.pt", {**state, "world_size": 2})
    with pytest.raises(ConfigError, match=r"^--resume: .* was trained with 2 rank\(s\) and this launch has 1"):
        fastrl.resume(run, total_steps=800)
