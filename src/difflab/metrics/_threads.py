"""One thread for the metrics' numerical work.

Their matrices are small (128-d features, 128 x 128 covariances, blocks of 1,000 x 1,000), so
more threads gain little on an idle machine, while on a busy one the thread pools of torch and
OpenBLAS spin against the other processes and a 128 x 128 sqrtm takes seconds instead of
milliseconds. One thread also makes the results independent of the machine's core count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch and (when threadpoolctl is installed) the BLAS libraries on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # then BLAS keeps its threads
            yield
        else:
            with threadpool_limits(limits=1):
                yield
    finally:
        torch.set_num_threads(threads)
