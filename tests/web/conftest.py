"""The web app's tests: one real app per session, on a free loopback port, serving a folder
with a tiny training run; a headless Chromium (Debian's, which scripts/setup.sh installs)
drives it through Playwright.

Without gradio (the `web` extra) the tests of the served app are skipped, and without
playwright or a `chromium` on PATH the browser tests are, each saying why; the handlers'
tests run regardless.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from difflab.cli import main as difflab_main
from difflab.web.limits import Limits, Roots
from difflab.web.models import ModelStore

WEB_EXTRA = "the web app needs the web extra: pip install -e '.[web]'"

# The smallest run `difflab train` makes (tests/tiny_run.py's network), with a sample grid at
# each of its 2 steps so that the Runs tab has grids to show, and an autoguidance guide.
TINY_RUN = [
    "--set",
    "model.overrides.base_channels=16",
    "--set",
    "model.overrides.channel_mults=[1, 2]",
    "--set",
    "model.overrides.attention_resolutions=[]",
    "--set",
    "model.overrides.groups=4",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.log_every=1",
    "--set",
    "train.sample_every=1",
    "--set",
    "data.limit=200",
    # a guide kept after the first step, so that the form's autoguidance has a model to show
    "--set",
    "train.guide_at=0.5",
    "--set",
    "sample.autoguidance=2",
]
# Small enough that a test draws in seconds on 2 shared cores.
TEST_LIMITS = Limits(max_steps=50, max_images=16, concurrency=1, queue_size=64)


def pytest_configure(config):
    # gradio's queue statistics use pandas options that pandas 3 deprecates: its business.
    config.addinivalue_line("filterwarnings", r"ignore:::gradio\.queueing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    """A free TCP port on loopback."""
    return free_port()


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Path:
    """The folder the session's app serves: a tiny finished training run in runs/tiny."""
    root = tmp_path_factory.mktemp("served")
    code = difflab_main(
        ["train", "digits8", "--steps", "2", "--out", str(root / "runs" / "tiny"), *TINY_RUN]
    )
    assert code == 0
    return root


@pytest.fixture(scope="session")
def store(served) -> ModelStore:
    return ModelStore(Roots([served]))


@pytest.fixture(scope="session")
def app_url(served, store, tmp_path_factory) -> str:
    """The URL of the session's app (in this process, on a thread), closed at the end. Its
    gradio cache (the files each request returns; /tmp/gradio unless GRADIO_TEMP_DIR says)
    is a folder of the session's, so the suite leaves nothing in /tmp."""
    pytest.importorskip("gradio", reason=WEB_EXTRA)
    from difflab.web.app import build_app, launch

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio_cache")))
        app = build_app(Roots([served]), TEST_LIMITS, store)
        url = launch(app, "127.0.0.1", free_port(), TEST_LIMITS, block=False, quiet=True)
        yield url.rstrip("/")
        app.close()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium through Playwright, or a skip that says what is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="browser tests need playwright (the web extra)"
    )
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip(
            "browser tests need Debian's chromium on PATH (scripts/setup.sh installs "
            "it with apt-get)"
        )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()
