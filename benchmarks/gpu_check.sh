#!/usr/bin/env bash
# lvdm's GPU check: on a bare GPU machine with no network, in at most 8 minutes, one JSON.
#
#   benchmarks/gpu_check.sh [--out PATH] [--work DIR] [--wheels DIR] [--budget SECONDS]
#   benchmarks/gpu_check.sh --dry-run --out /tmp/gpu_check.json     # on a CPU, < 1 minute (tested)
#
# Steps, in this order, each with its own timeout, the next one running whatever the last did:
#   install          the carried wheels into <work>/site (pip --no-index --no-deps --target): nothing
#                    is installed into the system or the repository; lvdm itself runs from src/
#                    (PYTHONPATH), which `pip install --no-deps -e .` would also give, but by writing
#                    src/lvdm.egg-info into the checkout
#   env              torch, CUDA, the device, which of lvdm's packages import
#   bench_h100       bench_dit.py --preset h100 --dtype bf16 --models lvdm latte: train samples/s, MFU,
#                    peak memory, 50-step CFG sampling time, the ratios to diffusers' Latte
#   bench_flash      the same for lvdm with --attention flash (skipped unless flash-attn imports: it
#                    has no wheel on PyPI; put one built for the machine's torch into the wheels folder)
#   synth, fit_bf16  `lvdm data synth` then `lvdm fit` of recipes/tiny/stdit.yaml in bf16-mixed (60 steps)
#   tests_sp         tests/distributed/test_sequence_parallel.py and tests/perf/test_speed_paths.py
#                    (the no-host-sync test runs on CUDA only)
#   tests_deepspeed  tests/distributed/test_zero.py (DeepSpeed ZeRO-2/3 on two processes)
#   bench_compile    bench_dit.py --preset h100 --dtype bf16 --models lvdm --compile (last: the slowest)
# A step that fails or times out is recorded and the check goes on; a step with under 10 s of the
# 480 s budget left is skipped. The JSON (default $OUT/gpu_check.json) is rewritten after every step:
# per step status, seconds, command, return code, output tail and numbers; a "summary" with the
# headline numbers and which targets they meet. Exit status 1 if any step failed or timed out.
#
# The wheels (an ignored folder, wheels/, 17 files, 45.6 MiB: the device's 64 MiB limit holds the checkout too)
# are made once on a machine with network, here for CPython 3.12 on x86-64, and carried along:
#
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform any -d wheels diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7 av==19.0.2 \
#       jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 omegaconf==2.4.0 \
#       importlib-metadata==10.2.0 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 \
#       lazy-importer==0.1.0 typing-extensions==4.16.0
#   python -m pip download --no-deps --no-binary=:all: -d /tmp/sdist deepspeed==0.19.8   # sdist only on PyPI
#   DS_BUILD_OPS=0 python -m pip wheel --no-deps --no-build-isolation -w wheels /tmp/sdist/deepspeed-0.19.8.tar.gz
#
# Checked 2026-12-07: these commands give the 17 wheels, which install with CPython 3.12's
# `pip install --no-index --no-deps --target` and import there (PyAV encodes H.264).
# These are what the GPU machines lack of lvdm's and DeepSpeed's dependencies (they have torch,
# lightning, transformers, torchmetrics, einops, safetensors, pyyaml, numpy, pandas, pyarrow, scipy,
# tensorboard, huggingface-hub, msgpack, ninja, psutil, py-cpuinfo). Keep one version of each.
# PYTHON: the interpreter to use (default python3). Relative paths are the caller's; the steps run
# in the repository root.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"
