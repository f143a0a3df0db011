"""scripts/gpu_check.sh and its helpers, on CPU: the sync audit's grouping, the SPS row's window,
and the whole script in its tiny CPU form (so that it cannot die on a typo the day a GPU comes)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import sync_audit  # noqa: E402
import train_sps  # noqa: E402


def _sync() -> None:
    warnings.warn("called a synchronizing CUDA operation", UserWarning)


def test_sync_audit_groups_syncs_by_call_path_and_lets_other_warnings_through():
    log = sync_audit.SyncLog(roots=("tests",))
    with pytest.warns(UserWarning, match="not a sync") as passed, sync_audit.collecting_syncs(log):
        for _ in range(3):
            _sync()  # one call path, three times
        _sync()  # another line: another path
        warnings.warn("not a sync", UserWarning)
    assert [str(w.message) for w in passed] == ["not a sync"]
    assert log.total == 4 and sorted(log.counts.values()) == [1, 3]
    (busiest, _), = [(p, c) for p, c in log.counts.items() if c == 3]
    assert busiest[-1].startswith("tests/test_gpu_check.py:") and busiest[-1].endswith(" _sync")
    table = sync_audit.markdown(log, vector_steps=6, title="t", watched=True)
    assert "4 syncs in 2 places over 6 vector steps" in table
    assert "| 3 | 0.5 | `tests/test_gpu_check.py:" in table and "called a synchronizing CUDA operation" in table


def test_best_window_sps_counts_only_windows_wholly_in_the_learning_phase():
    rows = [{"env_step": s, "wall_s": w, "updates": u} for s, w, u in
            [(1000, 0.1, 0), (2000, 1.1, 100), (3000, 1.6, 200), (4000, 3.6, 300)]]
    # 0 -> 1000 steps in 0.1 s is random acting; 1000 -> 2000 starts with no update done before it
    assert train_sps.best_window_sps(rows) == pytest.approx(1000 / 0.5)


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0


@pytest.mark.slow
def test_gpu_check_runs_every_step_in_its_cpu_form(tmp_path):
    """About 90 s on the 2-core CI machine: device facts, tests, SPS rows, sync audits and the
    latency table, all tiny and on CPU; the --cuda-graph runs are reported as needing CUDA."""
    env = {"GPU_CHECK_SMOKE": "1", "OUT": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
           "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    reports = list(tmp_path.glob("gpu_check-*.md"))
    assert len(reports) == 1 and len(list(tmp_path.glob("gpu_check-*.log"))) == 1
    report = reports[0].read_text()
    for heading in ("## Device", "## CUDA tests", "## Training SPS", "## Host syncs", "## Update latency", "## Steps"):
        assert heading in report, heading
    assert "| dqn CartPole-v1 (preset) | `" in report and "| td3 Pendulum-v1, --cuda-graph | needs CUDA |" in report
    assert "| DQN CartPole 256-256, batch 128 | eager |" in report
    assert "skipped: out of" not in report and "exit code 1" not in report
