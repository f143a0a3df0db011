"""The measurement scripts run end to end on tiny settings and print the tables BENCHMARKS.md quotes
(their figures are not asserted: a benchmark measures, it does not assert a time)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("args", [
    # device=cpu: on a GPU machine --device auto would pick CUDA and compile every run afresh
    ["--algo", "td3", "--steps", "700", "--learning-starts", "400", "--threads", "1",
     "--set", "batch_size=32", "hidden_sizes=[16,16]", "device=cpu"],
    # SAC: the agent's class comes from the registry (a fixed table of classes once missed it)
    ["--algo", "sac", "--steps", "600", "--learning-starts", "400", "--threads", "1",
     "--set", "batch_size=32", "hidden_sizes=[16,16]", "device=cpu"],
    # the docstring's DQN form: settings of another algorithm must not leak in (they once did)
    ["--algo", "dqn", "--steps", "1200", "--learning-starts", "400", "--threads", "1",
     "--set", "env=CartPole-v1", "num_envs=8", "batch_size=32", "hidden_sizes=[16,16]", "train_every=2",
     "updates_per_train=3", "device=cpu"],
])
def test_loop_phases_times_every_call_of_the_learning_phase(args):
    out = run_script("scripts/loop_phases.py", *args)
    calls = {m.group(1).strip(): int(m.group(2))
             for m in re.finditer(r"^(act|env send|buffer sample|update|env recv|buffer add)\s+(\d+)\s", out, re.M)}
    assert set(calls) == {"act", "env send", "buffer sample", "update", "env recv", "buffer add"}
    assert calls["act"] > 0 and calls["buffer sample"] > 0
    if "--algo dqn" in " ".join(args):
        assert calls["update"] == 3 * calls["buffer sample"]  # k = 3 mini-batches per sample call
    assert "warm, back to back" in out and "after a 3 ms sleep" in out


def test_flop_ceiling_prints_a_row_per_workload_with_the_matmuls_alone_bound():
    out = run_script("scripts/flop_ceiling.py", "--threads", "1", "--algos", "dqn", "ddpg", "--repeats", "4")
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+1\s+(dqn|ddpg)\s", line)]
    assert [r[1] for r in rows] == ["dqn", "ddpg"]
    for row in rows:
        update_ms, matmuls_ms = float(row[5]), float(row[8])
        assert float(row[2]) > 0 and 0 < matmuls_ms
        # the replay holds only the update's matrix products, so it cannot take longer by much
        assert matmuls_ms < 2 * update_ms


def test_allreduce_cost_prints_a_row_per_workload_and_rank_count():
    out = run_script("scripts/allreduce_cost.py", "--ranks", "2", "--repeats", "8")
    rows = [line for line in out.splitlines() if re.match(r"^(dqn|td3) .*\)\s+2\s", line)]
    assert len(rows) == 2, out
    dqn_floats = int(rows[0].split(")")[1].split()[1])
    assert dqn_floats == 67_586  # the preset's 4-256-256-2 Q-net, one flat gradient per update


def test_precision_bench_prints_both_precisions_and_their_ratio():
    out = run_script("scripts/precision_bench.py", "--threads", "1", "--algos", "ddpg", "dqn", "sac", "--updates", "3",
                     "--repeats", "1")
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+1\s+(ddpg|dqn|sac)\s", line)]
    assert [r[1] for r in rows] == ["ddpg", "dqn", "sac"]
    for row in rows:
        assert row[2] == "manual" and float(row[3]) > 0 and float(row[4]) > 0 and row[5].endswith("x")


@pytest.mark.parametrize("timing", [[], ["--per-call"]], ids=["means", "per-call"])
def test_buffer_micro_times_the_prioritized_pair_for_every_sum_tree(timing):
    out = run_script("scripts/buffer_micro.py", "--per", "--capacity", "20000", "--calls", "5", *timing)
    backends = re.findall(r"^sample\(1, 256\) \+ update_priorities\(256\), +(\w+) tree: +[\d.]+ us$", out, re.M)
    assert backends == ["numba", "torch", "numpy"], out
    out = run_script("scripts/buffer_micro.py", "--per", "--capacity", "20000", "--calls", "5", "--trees", "numba")
    assert re.findall(r"^sample\(1, 256\) \+ update_priorities\(256\), +(\w+) tree:", out, re.M) == ["numba"], out


def test_buffer_micro_times_cpprb_on_the_same_pair():
    pytest.importorskip("cpprb", reason="cpprb lives in a venv of its own (see scripts/buffer_micro.py)")
    out = run_script("scripts/buffer_micro.py", "--cpprb", "--capacity", "20000", "--calls", "5")
    assert re.search(r"^sample\(256\) \+ update_priorities\(256\), cpprb: +[\d.]+ us$", out, re.M), out


def test_buffer_micro_alternates_fastrl_and_cpprb_in_one_process():
    pytest.importorskip("cpprb", reason="cpprb lives in a venv of its own (see scripts/buffer_micro.py)")
    out = run_script("scripts/buffer_micro.py", "--versus-cpprb", "--capacity", "20000", "--calls", "40",
                     "--block", "10")
    sides = re.findall(r"^sample\(256\) \+ update_priorities\(256\), (fastrl numba|cpprb): +[\d.]+ us", out, re.M)
    assert sides == ["fastrl numba", "cpprb"], out
    assert re.search(r"^cpprb / fastrl per pair of blocks: median [\d.]+x, range [\d.]+-[\d.]+x over 4 pairs$",
                     out, re.M), out


def test_compare_peers_cores_pins_the_process_and_refuses_an_impossible_count():
    # --cores is what holds SBX's XLA (which ignores its thread flags) to fewer cores: the pin must
    # reach the process's affinity mask, which every thread started later inherits.
    allowed = len(os.sched_getaffinity(0))
    code = ("import os, sys; sys.path.insert(0, 'scripts'); import compare_peers as c; "
            "print(c.pin_to_cores(1)); print(len(os.sched_getaffinity(0)))")
    out = run_script("-c", code).split()
    assert out[-1] == "1"
    if allowed > 1:
        assert "pinned to CPU" in " ".join(out)
    done = subprocess.run([sys.executable, "scripts/compare_peers.py", "sac", "--cores", str(allowed + 1),
                           "--peers", "sb3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and f"--cores {allowed + 1}" in done.stderr


def test_compare_peers_mountaincar_gives_both_sides_the_zoo_schedule():
    # The Zoo's 8 updates every 16 steps on one env, on both sides; SB3's target period of 600 env
    # steps is fastrl's 300 updates. (The peers' own runs need SB3: BENCHMARKS.md has them.)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import compare_peers
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from fastrl.config import resolve

    work = compare_peers.WORKLOADS["mountaincar"](120_000, 64)
    kwargs, sb3_updates_per_transition = compare_peers.peer_kwargs("sb3", work, 1)
    assert (kwargs["train_freq"], kwargs["gradient_steps"]) == (16, 8)
    cfg = resolve(work.fastrl)
    assert cfg.updates_per_train / (cfg.train_every * cfg.num_envs) == sb3_updates_per_transition == 0.5
    # SB3 syncs every 600 env steps and trains every 16: 37.5 train phases of 8 updates on average
    updates_between_syncs = kwargs["target_update_interval"] / kwargs["train_freq"] * kwargs["gradient_steps"]
    assert cfg.target_period == updates_between_syncs == 300
    assert (cfg.double_dqn, cfg.loss, cfg.n_step) == (False, "huber", 1)
    with pytest.raises(SystemExit, match="one env"):
        compare_peers.peer_kwargs("sb3", work, 8)
    # refused before any run starts (the flag is checked before the peers are looked for)
    done = subprocess.run([sys.executable, "scripts/compare_peers.py", "mountaincar", "--sb3-envs", "1", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--sb3-envs" in done.stderr and "one env" in done.stderr
