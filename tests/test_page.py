"""The upstream's page, ``GET /``: rendered with every value escaped and a policy that lets
nothing else run, and — in a real browser, Debian's chromium driven by selenium — rows for
every mirror that turn fresh without a reload, readable without JavaScript too."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import html
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from mirrorhook import page, reports
from mirrorhook.announcers import Announcers
from mirrorhook.config import load_config
from mirrorhook.delivery import Courier
from mirrorhook.errors import ConfigError
from mirrorhook.freshness import Freshness, State
from mirrorhook.metrics import Metrics
from mirrorhook.response_cache import MAX_AGE, Body, ResponseCache
from mirrorhook.supervisor import Supervisor
from tests.helpers import (
    ClientFactory,
    LiveUpstream,
    Processes,
    RsyncDaemon,
    ServerFactory,
    mirror_secret,
    needs,
    publish,
    publisher_toml,
    until,
    wait_until,
)
from tests.mirrors import HookMirror
from tests.scene import Mirror, scene

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
    # Nothing is loaded from elsewhere; the mirrors' http(s) URLs are links, escaped.
    assert not re.search(r'src="(https?:)?//', body)
    assert set(re.findall(r'<(\w+)[^>]*\shref="(?:https?:)?//', body)) == {"a"}
    assert f'<a href="https://evil.example/{html.escape(HOSTILE)}/">' in body
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert '<a href="v1/mirrors">' in body
    # Behind a proxy at a path, the links keep its prefix.
    live = LiveUpstream.of(freshness)
    live.host = dataclasses.replace(live.host, public_url="https://up.example/mirrorhook")
    view = page.snapshot(live, now=0.0)
    assert '<a href="https://up.example/mirrorhook/v1/mirrors">' in page.render(view)


async def test_the_page_shows_deliveries_and_checks_from_memory_at_most_a_second_late(
    tmp_path: Path, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    """A running publisher (announcers, courier and report desk, as ``serve`` builds them):
    with publisher.json replaced by a folder after the first delivery (unreadable and
    unwritable), the page still shows that delivery; a second delivery and a check of the
    mirror reach the page on the first request once the rendered page is ``MAX_AGE`` old
    (the cache's clock is the test's), and not before: until then, one rendering serves."""
    root, served = tmp_path / "repo", tmp_path / "mirror"
    root.mkdir()
    served.mkdir()
    path = publisher_toml(tmp_path, root=root, mirrors=[("m", "http://127.0.0.1:1/")])
    hook = HookMirror(mirror_secret(tmp_path, "m"))
    hooks = await aiohttp_server(hook.app())
    files = web.Application()
    files.router.add_static("/", served)
    web_server = await aiohttp_server(files)
    path = publisher_toml(tmp_path, root=root, mirrors=[("m", str(hooks.make_url("/v1/hook")))])
    check_url = web_server.make_url("/CURRENT")
    path.write_text(
        path.read_text().replace('name = "m"', f'name = "m"\ncheck_url = "{check_url}"')
    )
    host = load_config(path).publishers
    assert host is not None
    publish(root, "1")
    (served / "CURRENT").write_text("1\n")
    now = [0.0]
    cache: page.PageCache = ResponseCache(page.render_body, clock=lambda: now[0])
    desk = reports.ReportDesk(host)
    app = web.Application()
    page.add_routes(app, desk, cache)
    client = await aiohttp_client(app)

    async def row() -> str:
        body = await (await client.get("/")).text()
        found = re.search(r'<tr class="\w+" data-mirror="m">.*?</tr>', body)
        assert found is not None, body
        return found[0]

    async with Courier(timeout=2, concurrency=4) as courier:
        announcers = Announcers(host, courier, Metrics(), Supervisor(), desk)
        announcers.start()
        try:
            record = host.state_dir / "publisher.json"
            await until(lambda: record.exists() and '"delivered": "1"' in record.read_text())
            await until(lambda: desk.checkers[None].freshness.state("m") == "fresh")
            record.unlink()
            record.mkdir()  # neither readable as a record nor writable
            first = await row()
            assert re.search(r'<td class="timeline"[^>]*>\+[\d.]+ s →', first), first
            assert "<code>1</code>" in first
            publish(root, "2")
            (served / "CURRENT").write_text("2\n")
            await until(lambda: hook.values() == ["1", "2"])
            await desk.checkers[None].check(host.repos[0].mirrors[0])
            assert await row() == first  # a second has not passed: the same rendering
            assert cache.renders == 1
            now[0] += MAX_AGE
            second = await row()
            assert cache.renders == 2
            assert "<code>2</code>" in second
            assert re.search(r'<td class="timeline"[^>]*>\+[\d.]+ s →', second), second
        finally:
            await announcers.stop()


async def test_concurrent_requests_share_one_rendering(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    """Twenty requests that arrive while the page is being rendered all get that one
    rendering, gzipped for those that accept it; the next request within the second too."""
    (tmp_path / "repo").mkdir()
    path = publisher_toml(tmp_path, root=tmp_path / "repo", mirrors=[("m", "http://x.example/")])
    config = load_config(path).publisher
    assert config is not None
    release = threading.Event()

    def slow(view: page.View) -> Body:
        release.wait(30)
        return page.render_body(view)

    # Its clock stands still: the request after the rendering comes within its second.
    cache: page.PageCache = ResponseCache(slow, clock=lambda: 0.0)
    arrived = 0

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal arrived
        arrived += 1
        return await handler(request)

    app = web.Application(middlewares=[count])
    page.add_routes(app, LiveUpstream.of(Freshness(config)), cache)
    client = await aiohttp_client(app)

    async def fetch(encoding: str) -> tuple[str | None, str]:
        async with client.get("/", headers={"Accept-Encoding": encoding}) as answer:
            assert answer.status == 200
            return answer.headers.get("Content-Encoding"), await answer.text()

    fetches = [asyncio.create_task(fetch(("gzip", "identity")[i % 2])) for i in range(20)]
    await until(lambda: arrived == 20)
    release.set()
    answers = await asyncio.gather(*fetches)
    assert cache.renders == 1
    assert {text for _encoding, text in answers} == {answers[0][1]}
    assert sorted({str(encoding) for encoding, _text in answers}) == ["None", "gzip"]
    assert (await fetch("gzip"))[1] == answers[0][1]
    assert cache.renders == 1


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
@needs("chromium", "chromedriver", package="chromium and chromium-driver")
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


@pytest.mark.slow
@needs("chromium", "chromedriver", package="chromium and chromium-driver")
async def test_in_a_real_browser_a_header_click_sorts_the_table_and_urls_are_links(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """Four mirrors 0, 3 and 1 publishes behind and one never checked: a click on the
    "behind" header sorts them by it (the unknown one last), a second click the other way
    (still last), and the order holds when the view is next replaced; the page's script
    runs under its policy (nothing refused). The legend names every state; a mirror's
    https URL is a link that opens its server, its rsync URL text."""
    from selenium.webdriver.chromium.webdriver import ChromiumDriver  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.remote.webdriver import WebDriver  # noqa: PLC0415
    from selenium.webdriver.remote.webelement import WebElement  # noqa: PLC0415
    from selenium.webdriver.support.wait import WebDriverWait  # noqa: PLC0415

    async def repo(_request: web.Request) -> web.Response:
        return web.Response(text="the repo of a")

    site = web.Application()
    site.router.add_get("/repo/", repo)
    mirror_site = await aiohttp_server(site)
    now = time.time()
    (tmp_path / "repo").mkdir()
    names = ["c", "d", "a", "b"]
    path = publisher_toml(
        tmp_path, root=tmp_path / "repo", mirrors=[(n, "http://x/") for n in names]
    )
    text = path.read_text()
    for name in names:
        urls = [f"https://{name}.example/", f"rsync://{name}.example/repo/"]
        if name == "a":
            urls[0] = str(mirror_site.make_url("/repo/"))
        entry = f'check_url = "https://{name}.example/CURRENT"\nurls = {json.dumps(urls)}'
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\n{entry}\n')
    path.write_text(text)
    config = load_config(path).publisher
    assert config is not None
    clock = [now - 400]
    freshness = Freshness(config, clock=lambda: clock[0])
    for value in ("1", "2", "3", "4"):
        freshness.published(value)
        clock[0] += 100
    for name, value in (("a", "4"), ("b", "1"), ("c", "3")):
        freshness.observed(name, value, None)
    app = web.Application()
    page.add_routes(app, LiveUpstream.of(freshness))
    server = await aiohttp_server(app)

    def browse() -> None:
        with chromium() as browser:
            assert isinstance(browser, ChromiumDriver)
            browser.get(str(server.make_url("/")))

            def order(driver: WebDriver) -> list[str]:
                found = driver.execute_script(
                    "return Array.from(document.querySelectorAll('tr[data-mirror]'))"
                    ".map(row => row.dataset.mirror);"
                )
                return [str(name) for name in found]

            def header(name: str) -> WebElement:
                return browser.find_element(By.XPATH, f"//th[text()='{name}']")

            # The policy refused nothing (selenium's get_log is untyped).
            logged = browser.get_log("browser")  # type: ignore[no-untyped-call]
            assert [e for e in logged if "Content Security Policy" in str(e["message"])] == []
            assert order(browser) == names  # as configured
            shown = browser.execute_script(
                "return Array.from(document.querySelectorAll("
                "`tr[data-mirror='b'] td`)).map(cell => cell.textContent);"
            )
            assert shown[3] == "3 · 5 min"  # 3 publishes behind, the first 300 s ago
            assert shown[8] == "0%"  # its one check found it behind
            behind = header("behind")
            behind.click()
            assert order(browser) == ["a", "c", "b", "d"]
            assert behind.get_attribute("aria-sort") == "ascending"
            behind.click()
            assert order(browser) == ["b", "c", "a", "d"]
            browser.execute_script("window.shown = document.getElementById('view');")
            WebDriverWait(browser, 10, poll_frequency=0.2).until(
                lambda driver: driver.execute_script(
                    "return document.getElementById('view') !== window.shown;"
                )
            )
            assert order(browser) == ["b", "c", "a", "d"]  # kept across the refresh
            header("mirror").click()
            assert order(browser) == ["a", "b", "c", "d"]
            legend = browser.find_elements(By.CSS_SELECTOR, "dl.legend dt")
            assert [item.text for item in legend] == [str(state) for state in State]
            rsync = browser.find_element(By.XPATH, "//div[text()='rsync://a.example/repo/']")
            assert rsync.tag_name == "div"
            browser.find_element(By.LINK_TEXT, str(mirror_site.make_url("/repo/"))).click()
            WebDriverWait(browser, 10).until(lambda driver: "the repo of a" in driver.page_source)

    await asyncio.to_thread(browse)
