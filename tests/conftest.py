"""Shared test settings."""

import os

import pytest
import torch

# The suite must not assume native bf16 (most laptops emulate it, 7-13x slower): every run
# with train.precision = "auto" takes the no-native-bf16 path here, on any CPU. Tests of the
# native path set DIFFLAB_NATIVE_BF16=1 themselves.
os.environ.setdefault("DIFFLAB_NATIVE_BF16", "0")
# One intra-op thread, as below; train.threads = "auto" reads it instead of timing 1 vs 2.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The suite's tensors are small: on 2 cores, two OpenMP threads per process mostly wait on
    each other (a 3 s test took 80 s at load 7), so every test runs on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
