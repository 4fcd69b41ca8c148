from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _probe_cache(tmp_path_factory: pytest.TempPathFactory):
    """Engines cache their start-up probes; the suite keeps them in a folder of its own, not ~/.cache."""
    import os

    old = os.environ.get("LIVEDENOISE_CACHE")
    os.environ["LIVEDENOISE_CACHE"] = str(tmp_path_factory.mktemp("livedenoise-cache"))
    yield
    if old is None:
        os.environ.pop("LIVEDENOISE_CACHE", None)
    else:
        os.environ["LIVEDENOISE_CACHE"] = old


@pytest.fixture
def rng() -> np.random.Generator:  # noqa: F821
    import numpy as np

    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _restore_livedenoise_logger():
    """`livedenoise.cli.main()` configures the logger, as a program's entry point should.

    Tests call main() in-process, so put the logger back afterwards: otherwise a later
    test's ``caplog`` would see nothing (propagate=False) or duplicate handlers.
    """
    import logging

    log = logging.getLogger("livedenoise")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


_TORCH_THREADS: list[int] = []  # torch's own thread count, read the first time a test has torch loaded


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A live engine made in-process sets torch's (process-wide) thread count to the live default
    (every core but one): put torch's own count back, so later tests run on the cores they would have."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and not _TORCH_THREADS:
        _TORCH_THREADS.append(torch.get_num_threads())
    yield
    torch = sys.modules.get("torch")
    if torch is not None and _TORCH_THREADS and torch.get_num_threads() != _TORCH_THREADS[0]:
        torch.set_num_threads(_TORCH_THREADS[0])
