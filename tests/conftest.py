import matplotlib
import pytest
import torch

matplotlib.use("Agg")
# The toy models are tiny: one thread avoids OpenMP overhead (and oversubscription when tutorial
# subprocesses run beside the test process).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
