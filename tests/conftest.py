"""Test-session setup: runtime shape checks of every jaxtyping annotation, the Agg backend."""

import jaxtyping

# Check every jaxtyping annotation (``Float[Tensor, "batch inst feat"]``) at runtime, as
# TransformerLens's test suite does, with beartype as the checker (ints are accepted where floats
# are annotated, PEP 484's numeric tower). Installed before anything imports the packages. (The
# ``--jaxtyping-packages`` pytest flag cannot pass a configured checker: jaxtyping 0.3.11 splits it
# at the wrong comma.)
jaxtyping.install_import_hook(
    ["memlens", "toy_models", "probes"],
    "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))",
)

import sys  # noqa: E402

import matplotlib  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")
# No thread pinning here: memlens's own policy (memlens.threads) chooses, as it does for a user.


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test made (probes' plots) are closed after it, so none outlives its test."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture(autouse=True)
def _user_errors(request):
    """Tests marked ``user_errors`` check the messages a user sees for bad input, so they run
    without the test-only annotation checks (which would pre-empt memlens's own ValueErrors)."""
    if request.node.get_closest_marker("user_errors") is None:
        yield
        return
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
