"""Benchmark fixtures: every benchmark that takes `device` runs on the CPU and, when torch sees
one, on CUDA. Run with `pytest benchmarks --benchmark-only` (see BENCHMARKS.md)."""

from __future__ import annotations

import platform

import pytest
import torch

DEVICE_PARAMS = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICE_PARAMS)
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(request.param)


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    # Saved runs should say what they were measured with, or --benchmark-compare misleads.
    machine_info["torch_version"] = torch.__version__
    machine_info["torch_num_threads"] = torch.get_num_threads()
    machine_info["cpu_model"] = _cpu_model()
    if torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name(0)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
