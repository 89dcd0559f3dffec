"""Shared fixtures for the whole test suite (real S3 servers live in tests/s3server.py)."""

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
