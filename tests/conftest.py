import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
