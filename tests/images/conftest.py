"""Lathe's built images in a private Docker engine (build them first: `bash images/build.sh`).

* ``docker`` (session): e2e/images/engine.Docker on a private dockerd (e2e/images/dockerd.sh, the one
  images/build.sh uses), stopped at the end of the session and on every failed set-up;
* ``images`` (session): {"operator": ref, "worker": ref}, each loaded from its tar unless the engine
  already holds that exact image. A missing tar or engine is an error naming the fix, never a skip.
"""

from __future__ import annotations

import pytest

from e2e.images.built import built_images, tar_info, wait_for_build
from e2e.images.engine import private_dockerd
from e2e.images.keys import BUILT, ref


@pytest.fixture(scope="session")
def docker():
    wait_for_build()  # images/build.sh uses the same private engine: never both at once
    with private_dockerd() as d:
        yield d


@pytest.fixture(scope="session")
def images(request):
    tars = built_images()  # raises ImagesNotBuilt ("run `bash images/build.sh`") before any engine starts
    docker = request.getfixturevalue("docker")
    for r, tar in tars.items():
        docker.ensure_loaded(r, tar, tar_info(tar)["id"])
    return {name: ref(name) for name in BUILT}
