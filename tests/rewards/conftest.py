"""Fixtures of the reward tests: hand-written trajectories (tests/trajectory_builders.py), no model involved."""

from __future__ import annotations

import pytest
from trajectory_builders import build_trajectory



@pytest.fixture
def make_trajectory():
    return build_trajectory
