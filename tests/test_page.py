"""The upstream's page, ``GET /``: rendered with every value escaped and a policy that lets
nothing else run, and — in a real browser, Debian's chromium driven by selenium — rows for
every mirror that turn fresh without a reload, readable without JavaScript too."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirrorhook import page
from mirrorhook.config import load_config
from mirrorhook.errors import ConfigError
from mirrorhook.freshness import Freshness
from tests.helpers import LiveUpstream, Processes, RsyncDaemon, publish, publisher_toml, wait_until
from tests.scene import Mirror, scene

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
HOSTILE = '<script>document.title="owned"</script>'


async def test_the_page_escapes_every_value_and_allows_only_its_own_script(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    (tmp_path / "repo").mkdir()
    path = publisher_toml(
        tmp_path,
        root=tmp_path / "repo",
        mirrors=[("evil", f"http://127.0.0.1:1/{HOSTILE}"), ("plain", "http://127.0.0.1:1/")],
    )
    path.write_text(
        path.read_text().replace(
            'name = "evil"\n',
            f'name = "evil"\nurls = [{json.dumps(f"https://evil.example/{HOSTILE}/")}]\n',
        )
    )
    config = load_config(path).publisher
    assert config is not None
    freshness = Freshness(config, clock=lambda: 1_800_000_000.0)
    freshness.published("7")
    freshness.observed("evil", None, f"HTTP 500 {HOSTILE}")
    freshness.reported("evil", HOSTILE)
    freshness.observed("plain", "7", None)
    app = web.Application()
    page.add_routes(app, LiveUpstream.of(freshness))
    client = await aiohttp_client(app)
    answer = await client.get("/")
    assert answer.status == 200
    assert answer.content_type == "text/html"
    body = await answer.text()
    assert "<script>document" not in body
    assert body.count("&lt;script&gt;document.title=&quot;owned&quot;&lt;/script&gt;") >= 2
    assert re.search(r'<tr class="syncing" data-mirror="evil">', body)
    assert re.search(r'<tr class="fresh" data-mirror="plain">', body)
    # Without JavaScript the page still says everything, and reloads itself.
    assert '<noscript><meta http-equiv="refresh"' in body
    # The policy allows the inline script and style by hash, and nothing from elsewhere.
    policy = answer.headers["Content-Security-Policy"]
    (script,) = re.findall(r"<script>(.*?)</script>", body, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert not re.search(r'(src|href)="(https?:)?//', body)
    assert '<a href="v1/mirrors">' in body
    # Behind a proxy at a path, the links keep its prefix.
    live = LiveUpstream.of(freshness)
    live.host = dataclasses.replace(live.host, public_url="https://up.example/mirrorhook")
    assert '<a href="https://up.example/mirrorhook/v1/mirrors">' in page.render(live, 0.0)


def test_a_mirror_name_cannot_carry_markup(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    path = publisher_toml(tmp_path, root=tmp_path / "repo", mirrors=[("ok", "http://x.example/")])
    path.write_text(path.read_text().replace('name = "ok"', 'name = "<script>"'))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "mirrors[0].name: must be letters, digits" in str(caught.value)


# The browser test.
MIRRORS = (
    Mirror("alpha", urls=("https://alpha.example/repo/",)),
    Mirror("beta", checked=False, urls=("https://beta.example/repo/",)),
    Mirror("cron", kind="cron", urls=(f"https://cron.example/{HOSTILE}/",)),
    Mirror("gone", kind="gone", urls=("https://gone.example/repo/",)),
)


def browser_missing() -> str | None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    return "no browser: chromium and chromedriver are missing (make test installs them with apt)"


@contextlib.contextmanager
def chromium(*, javascript: bool = True) -> Iterator[object]:
    """Debian's chromium, headless, through its chromedriver (no download, no network)."""
    from selenium import webdriver  # noqa: PLC0415 - only where a browser runs

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,640",
        "--disable-gpu",
    ):
        options.add_argument(argument)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    service = webdriver.ChromeService(executable_path=str(shutil.which("chromedriver")))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_in_a_real_browser_rows_turn_fresh_without_a_reload(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """Every mirror's row and state; a publish turns the receivers' rows fresh while the
    page stays loaded; markup from the config is shown as text; the page reads without
    JavaScript. The screenshot is the README's (MIRRORHOOK_SCREENSHOT=docs/page.png)."""
    from selenium.webdriver.remote.webdriver import WebDriver  # noqa: PLC0415
    from selenium.webdriver.support.wait import WebDriverWait  # noqa: PLC0415

    def cells(driver: WebDriver, name: str, *selectors: str) -> list[str]:
        """Texts in one mirror's row, read in one script: the refresh replaces the rows."""
        found = driver.execute_script(
            "const row = document.querySelector(`tr[data-mirror='${arguments[0]}']`);"
            "return arguments[1].map(s => s === 'class' ? row.className"
            " : row.querySelector(s).textContent);",
            name,
            list(selectors),
        )
        return [str(text) for text in found]

    def row_state(driver: WebDriver, name: str) -> str:
        return cells(driver, name, "class")[0]

    def serving(driver: WebDriver, name: str) -> str:
        return cells(driver, name, "td:nth-child(3)")[0]

    with scene(
        tmp_path, processes, daemon, MIRRORS, check_interval=1, stale_after=600, name="up.example"
    ) as upstream:
        upstream.sync_cron("cron")
        expected = {"alpha": "fresh", "cron": "fresh", "gone": "unreachable"}
        wait_until(
            lambda: {k: v for k, v in upstream.states().items() if k in expected} == expected,
            what="alpha and cron fresh, gone unreachable",
        )
        with chromium() as browser:
            assert isinstance(browser, WebDriver)
            browser.get(upstream.base + "/")
            for name, state in expected.items():
                assert row_state(browser, name) == state
            assert row_state(browser, "beta") in ("unknown", "fresh")
            assert serving(browser, "alpha") == "1"
            browser.execute_script("window.stillTheSamePage = true;")

            publish(daemon.root, "2", {"dir1/new.rpm": "new\n"})
            WebDriverWait(browser, 30, poll_frequency=0.2).until(
                lambda driver: (
                    row_state(driver, "alpha") == "fresh"
                    and serving(driver, "alpha") == "2"
                    and row_state(driver, "beta") == "fresh"
                    and row_state(driver, "cron") == "behind"
                )
            )
            assert browser.execute_script("return window.stillTheSamePage;") is True
            (timeline,) = cells(browser, "alpha", "td.timeline")
            assert re.fullmatch(r"\+[\d.]+ s → \+[\d.]+ s → \+[\d.]+ s", timeline), timeline
            (urls,) = cells(browser, "cron", ".urls")
            assert HOSTILE in urls  # shown as text, not run
            assert browser.title == "mirrorhook · up.example"
            shot = browser.get_screenshot_as_png()
        (tmp_path / "page.png").write_bytes(shot)
        if target := os.environ.get("MIRRORHOOK_SCREENSHOT"):
            Path(target).write_bytes(shot)

        with chromium(javascript=False) as plain:
            assert isinstance(plain, WebDriver)
            plain.get(upstream.base + "/")
            assert row_state(plain, "alpha") == "fresh"
            assert serving(plain, "alpha") == "2"
            assert row_state(plain, "gone") == "unreachable"
