"""Every test starts with fresh default-name counters, so layer names (``dense``,
``dense_1``...) do not depend on which tests ran before."""

import pytest

from fastnn.utils import clear_session


@pytest.fixture(autouse=True)
def _fresh_names():
    clear_session()
