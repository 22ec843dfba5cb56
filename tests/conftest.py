"""Shared fixtures. Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost (large on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype: e3nn builds its constants (and its checker the rotation matrices, via
    Wigner D) in the default dtype, which in float32 limits equivariance to ~1e-7 however a network is cast."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def workflow_script():
    """``workflow_script("benchmarks/gnn_cost.py")`` -> that script under ``workflows/`` imported as a module."""

    def load(relative: str):
        path = Path(__file__).resolve().parents[1] / "workflows" / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def mueller_brown_langevin():
    """(system, Langevin term with the exact potential, state A, state B) of Mueller-Brown (float64 throughout)."""
    from molscore.paths import ForceFieldLangevin, load_states
    from molscore.system import load_system

    system = load_system("mueller_brown")
    _, states = load_states(system)
    term = ForceFieldLangevin(system.potential, system.masses, system.kT, system.settings["friction"])
    return system, term, states["A"], states["B"]
