"""Every host sync of a short training run on CUDA, where it comes from and how often.

    python scripts/sync_audit.py -- --total-steps 4000 --learning-starts 1000 --device cuda
    python scripts/sync_audit.py --title "td3 graphed" -- --algo td3 --env Pendulum-v1 \
        --total-steps 2000 --learning-starts 1000 --device cuda --cuda-graph

Runs `fastrl.train` in this process under `torch.cuda.set_sync_debug_mode("warn")`, which warns at
every CUDA call that makes the host wait for the device (a device-to-host copy, `.item()`,
`.tolist()`, a blocking copy, an explicit synchronize). Each warning is kept with the Python stack
it was raised from; they are grouped by the repository's frames on that stack and printed as a
markdown table, most frequent first, with the count per vector step: a sync with about one per
vector step is in the step's path (the actions going to the CPU envs must be one), fewer are per
train phase, per log window, per evaluation or at set-up.

Without CUDA there is nothing to watch: the run goes on as given and the table says so.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNC_WARNING = "synchroniz"  # torch: "called a synchronizing CUDA operation"
CHAIN_FRAMES = 4  # repository frames shown per call path, innermost last


@dataclass
class SyncLog:
    """Sync warnings grouped by call path: the frames on the stack from the repository's folders
    `roots`."""
    roots: tuple[str, ...] = ("fastrl", "scripts")
    counts: collections.Counter = field(default_factory=collections.Counter)
    messages: dict[tuple, str] = field(default_factory=dict)

    def record(self, message: str, stack: traceback.StackSummary) -> None:
        path = repository_frames(stack, self.roots)
        self.counts[path] += 1
        self.messages.setdefault(path, message.splitlines()[0][:80])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def repository_frames(stack: traceback.StackSummary, roots: tuple[str, ...]) -> tuple[str, ...]:
    """`file:line function` of each frame in the repository's folders `roots` (this audit's own
    frames left out), outermost first."""
    me = Path(__file__).resolve()
    out = []
    for frame in stack:
        path = Path(frame.filename).resolve()
        if path == me or ROOT not in path.parents:
            continue
        rel = path.relative_to(ROOT)
        if rel.parts[0] in roots:
            out.append(f"{rel}:{frame.lineno} {frame.name}")
    return tuple(out)


@contextmanager
def collecting_syncs(log: SyncLog) -> Iterator[None]:
    """Record every sync warning raised inside, with its stack; other warnings pass as usual."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings' API)
            if SYNC_WARNING in str(message):
                log.record(str(message), traceback.extract_stack()[:-1])
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show  # restored by catch_warnings
        yield


@contextmanager
def sync_debug_mode(enabled: bool) -> Iterator[None]:
    import torch

    if not enabled:
        yield
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def markdown(log: SyncLog, vector_steps: int, title: str, watched: bool) -> str:
    lines = [f"### Host syncs: {title}", ""]
    if not watched:
        return "\n".join(lines + ["No CUDA device: sync debug mode had nothing to watch (the run went on as given).", ""])
    lines += [f"{log.total} syncs in {len(log.counts)} places over {vector_steps} vector steps.", "",
              "| syncs | per vector step | where (innermost repository frame) | via | warning |",
              "|---|---|---|---|---|"]
    for path, count in log.counts.most_common():
        where = path[-1] if path else "(no repository frame)"
        via = " ← ".join(reversed(path[-CHAIN_FRAMES:-1])) if len(path) > 1 else ""
        lines.append(f"| {count} | {count / max(vector_steps, 1):.3g} | `{where}` | {via} | {log.messages[path]} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--title", default=None, help="the table's title (default: the training flags)")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    import torch

    from train_sps import run_training  # scripts/ is this script's own folder, first on sys.path

    watched = torch.cuda.is_available()
    log = SyncLog()
    with collecting_syncs(log), sync_debug_mode(watched):
        code, run_dir = run_training(flags)
    vector_steps = 0
    if (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        vector_steps = int(summary["env_steps"]) // int(config["num_envs"])
    print(markdown(log, vector_steps, args.title or " ".join(flags), watched), flush=True)
    if code != 0:
        print(f"(the training run exited with code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
