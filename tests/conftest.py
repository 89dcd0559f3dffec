"""Shared fixtures for the whole test suite (real S3 servers live in tests/s3server.py)."""

import pytest

from tests.agent import daemons  # noqa: F401 - imported so pytest registers the fixture
from tests.attacks import app_user, reachable, small_disk, victim  # noqa: F401 - registers the fixtures
from tests.faults import stalling_proxy  # noqa: F401 - imported so pytest registers the fixture
from tests.s3server import (  # noqa: F401 - imported so pytest registers the fixtures
    aws_env,
    ep,
    fault_proxy,
    make_bucket,
    moto_server,
    pool,
    s3_client,
    seaweed,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run first (stable order otherwise): under ``make test``'s parallel workers
    the longest wait starts at once instead of ending the run alone on one worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
