#!/usr/bin/env bash
# Download, here, the wheels that scripts/gpu_check.sh installs on the GPU machine, into .whl/
# (git-ignored). That machine reaches no package index; it already holds torch (CUDA), numpy,
# matplotlib, numba, pytest, pytest-benchmark, hypothesis, absl-py, attrs and wrapt, and runs
# CPython 3.12. What fastrl needs beyond those: gymnasium, and envpool with the packages it imports
# (its asset packages are left out: CartPole and Pendulum need none, and they are hundreds of MB).
# About 54 MB in all; the remote tool carries 64 MiB, so name `.whl` in its `carry`.
#
#   bash scripts/gpu_wheels.sh            # then: run tool, carry [".whl"], command `bash scripts/gpu_check.sh`
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${GPU_WHEELS_PYTHON:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    "gymnasium==1.4.0" "farama-notifications" "envpool==1.2.5" "dm-env" "dm-tree" "optree" "types-protobuf" "glfw"
ls -la .whl
du -sh .whl
