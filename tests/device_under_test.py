"""The device that device-dependent tests run on: $DIST_LLM_TEST_DEVICE, default cpu.

bench/gpu_check.sh sets DIST_LLM_TEST_DEVICE=cuda to run them on a GPU.
"""

import os

import torch

TEST_DEVICE = torch.device(os.environ.get("DIST_LLM_TEST_DEVICE", "cpu"))
