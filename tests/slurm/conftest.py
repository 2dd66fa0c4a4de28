import shutil
import warnings

import pytest

from cluster import LocalSlurm, SlurmUnavailable, prepare_host


@pytest.fixture(scope="session")
def slurm():
    """A running four-node Slurm cluster, stopped at the end whatever happened."""
    try:
        prepare_host()
    except SlurmUnavailable as exc:
        pytest.skip(f"no local Slurm: {exc}")
    cluster = LocalSlurm()
    try:
        cluster.start()
        yield cluster
    finally:
        killed = cluster.stop()
        if killed:
            warnings.warn(f"local Slurm did not stop cleanly: {killed}")
        shutil.rmtree(cluster.root, ignore_errors=True)
