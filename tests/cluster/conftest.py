"""One compose cluster for the module: built (deploy/build-images), started, and taken down with
its volumes after; its logs are printed when a test failed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.compose_cluster import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("cluster"))
    built_s = running.build_images()
    try:
        up_s = running.up()
        print(f"\ncluster: images built in {built_s:.0f} s, stack healthy {up_s:.0f} s after up")
        yield running
    finally:
        log = Path(running.tmp) / "compose.log"
        try:
            log.write_text(running.logs())
            print(f"cluster logs: {log}")
        finally:
            running.down()
