"""A job finds its worker's context only through the paxyo worker performing it."""

from __future__ import annotations

import pytest

from workers.jobs import check_shard


def test_check_shard_outside_a_paxyo_worker_is_refused_not_built_from_the_environment() -> None:
    with pytest.raises(RuntimeError, match="paxyo worker"):
        check_shard("sim", [1], "token")
