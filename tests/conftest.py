import os

# Never let a test reach for a model hub (a look-up retries for a minute before failing).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), "..", ".cache-test-torch"))

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the suite's models are tiny, and on a busy 2-core machine OpenMP's thread
# hand-offs make small operations many times slower than running them on one core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    """Tiny train/val code stores, their VQ and a tiny encoder (``helpers.build_stores``)."""
    from helpers import build_stores

    return build_stores(tmp_path_factory.mktemp("stores"))


@pytest.fixture(scope="session")
def bench_stores(tmp_path_factory):
    """Stores of 32 px images tokenized by the committed 8x8 VQ and a base config (``bench_helpers``)."""
    from bench_helpers import build_bench_stores

    return build_bench_stores(tmp_path_factory.mktemp("bench"))
