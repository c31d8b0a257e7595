"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The suite's tensors are small: on 2 cores, two OpenMP threads per process mostly wait on
    each other (a 3 s test took 80 s at load 7), so every test runs on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
