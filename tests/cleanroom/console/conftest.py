"""The console against a real collaboration: `cleanroom local` processes
(SIMULATED evidence, labelled), one `cleanroom console` process per party,
and Debian's chromium driven by Selenium through /usr/bin/chromedriver.

Without chromium the browser tests are skipped with the reason, except under
``CI=true``, where scripts/bootstrap installs it and a missing browser is a
failure.  Screenshots go to the test's temporary directory, and also to
``$SGXCLOUD_CONSOLE_SCREENSHOTS`` when set (scripts/console-screenshots uses
that, with a larger ``$SGXCLOUD_CONSOLE_PEOPLE``, to refresh docs/cleanroom/console/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import sgxcloud
from sgxcloud.cleanroom.local import LocalCollaboration, prepare_example

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


@dataclass
class Console:
    """A running `sgxcloud cleanroom console` process for one party."""

    party: str
    url: str  # with the access token
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_console(workdir: Path, party: str, *extra: str) -> Console:
    run = workdir / "run"
    run.mkdir(exist_ok=True)
    ready = run / f"console-{party}.ready"
    ready.unlink(missing_ok=True)
    log = workdir / "logs" / f"console-{party}.log"
    log.parent.mkdir(exist_ok=True)
    env = dict(os.environ)
    src = str(Path(sgxcloud.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sgxcloud.cli.main",
                "cleanroom",
                "console",
                "--workdir",
                str(workdir),
                "--party",
                party,
                "--ready-file",
                str(ready),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"console {party} exited: {log.read_text()[-500:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"console {party} did not start")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return Console(party, info["url"], info["port"], proc, log)


@dataclass
class Collab:
    local: LocalCollaboration
    consoles: dict[str, Console] = field(default_factory=dict)

    @property
    def workdir(self) -> Path:
        return self.local.workdir

    def console(self, party: str) -> Console:
        if party not in self.consoles:
            self.consoles[party] = start_console(self.workdir, party)
        return self.consoles[party]

    def restart_coordinator(self) -> None:
        """What the coordinator's operator does: restart it with the approvals
        now on disk.  It comes back with a new TLS key on a new port; consoles
        started with --workdir follow it there."""
        old = self.local.url
        self.local.stop("coordinator")
        self.local.approvals = sorted((self.workdir / "approvals").glob("*.json"))
        self.local.start_coordinator()
        assert self.local.url != old

    def stop(self) -> None:
        for console in self.consoles.values():
            console.stop()
        self.local.stop()


def _collab(workdir: Path, *, people: int, unapproved: str | None = None) -> Collab:
    local = prepare_example(workdir, people=people, min_group_size=20, dp=True, dp_budget=20.0)
    if unapproved:
        # This provider has not approved yet: no node will send data.
        (workdir / "approvals" / f"{unapproved}.json").unlink()
        local.approvals = [a for a in local.approvals if a.stem != unapproved]
    local.start()
    return Collab(local)


@pytest.fixture(scope="session")
def collab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collab]:
    """Every provider has approved; data ingested; consoles started on demand."""
    people = int(os.environ.get("SGXCLOUD_CONSOLE_PEOPLE", "10000"))
    c = _collab(tmp_path_factory.mktemp("console"), people=people)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def unapproved_collab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collab]:
    """telecom has not approved the definition yet."""
    c = _collab(tmp_path_factory.mktemp("console-unapproved"), people=400, unapproved="telecom")
    yield c
    c.stop()


# -- the browser ------------------------------------------------------------------------------


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} missing (Debian packages chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed"
    return None


@dataclass
class Browser:
    driver: Any
    downloads: Path
    shots: list[Path]

    def screenshot(self, name: str, height: int | None = None) -> Path:
        """Save a PNG of the page (the full page height, up to ``height``)."""
        d = self.driver
        full = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(1280, min(max(full, 600), height or 2400))
        target = self.shots[0] / f"{name}.png"
        d.save_screenshot(str(target))
        for extra in self.shots[1:]:
            shutil.copyfile(target, extra / target.name)
        d.set_window_size(1280, 1000)
        return target

    def wait_download(self, suffix: str, timeout: float = 20) -> Path:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [
                p
                for p in self.downloads.iterdir()
                if p.name.endswith(suffix) and not p.name.endswith(".crdownload")
            ]
            if done:
                return done[0]
            time.sleep(0.1)
        raise AssertionError(f"no *{suffix} downloaded: {list(self.downloads.iterdir())}")

    def console_errors(self) -> list[dict[str, Any]]:
        """Browser console messages of level SEVERE (CSP violations among them)."""
        return [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests need chromium: {missing}")
        pytest.skip(f"browser tests need chromium: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    shots = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("SGXCLOUD_CONSOLE_SCREENSHOTS"):
        extra = Path(os.environ["SGXCLOUD_CONSOLE_SCREENSHOTS"])
        extra.mkdir(parents=True, exist_ok=True)
        shots.append(extra)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never runs, nothing is downloaded.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield Browser(driver, downloads, shots)
    finally:
        driver.quit()
