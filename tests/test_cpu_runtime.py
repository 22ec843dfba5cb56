"""CPU settings: threads on purpose, and the allocator told to keep freed memory where glibc is there."""

import sys

import pytest
import torch

from molscore.cpu_runtime import configure_cpu, keep_freed_memory


def test_configure_cpu_sets_threads_and_refuses_nonsense():
    threads = torch.get_num_threads()
    try:
        configure_cpu(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        configure_cpu(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_takes_effect_on_linux():
    assert keep_freed_memory() is True
    x = torch.ones(8 * 1024 * 1024)  # 32 MB: still allocates and frees normally
    assert float(x.sum()) == x.numel()
