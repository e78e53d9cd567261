"""Suite-wide settings.

Every test model is tiny: a second torch thread gains nothing, and on a busy 2-core machine two
OpenMP threads waiting for each other make every small op milliseconds long. Tests that need more
threads (none today) set them themselves.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
