"""Reports the publisher refused: counted per repository where the report named one it has,
else for the whole publisher, and shown — never with a secret — on the page, in
``/v1/status`` and in ``mirrorhook status``."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import aiohttp

from mirrorhook import page, reports
from mirrorhook.checker import Checker
from mirrorhook.config import Config, load_config
from mirrorhook.freshness import Freshness
from mirrorhook.public_addresses import public_session
from mirrorhook.publisher_config import PublisherHost
from mirrorhook.report_refusals import STATE_NAME, Refused, RefusedReports, read_refused
from mirrorhook.status import format_status, host_status
from tests.helpers import (
    ClientFactory,
    ReportPoster,
    mirror_secret,
    publisher_toml,
    report_body,
    signed_report,
)


def report(mirror: str, repo: str | None) -> bytes:
    return report_body(mirror, "2", repo=repo)


async def test_refused_reports_are_counted_by_repository_and_shown_without_secrets(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    """Two repositories: a report of ius's mirror ``a`` signed with ``b``'s secret and one
    naming a mirror ius lacks count for ius (the last naming ``a``); one naming no
    repository the publisher has, a body that is no report and one too large count for
    the publisher. The record, ``status --json``, ``status`` and the page show each count
    with the last one's time, answer, reason and sender, and no secret anywhere."""
    (tmp_path / "repo").mkdir()
    path = publisher_toml(
        tmp_path, root=tmp_path / "repo", mirrors=[("a", "http://a/"), ("b", "http://b/")]
    )
    one = load_config(path).publisher
    assert one is not None
    trees = tuple(
        dataclasses.replace(one, repo=name, state_dir=one.state_dir / "repos" / name)
        for name in ("ius", "epel")
    )
    host = PublisherHost(one.state_dir, trees, name="up.example")
    secrets = {name: mirror_secret(tmp_path, name) for name in ("a", "b")}
    async with aiohttp.ClientSession() as session, public_session() as public:
        desk = reports.ReportDesk(host)
        for tree in trees:
            desk.checkers[tree.repo] = Checker(Freshness(tree), session, public=public)
        post = (await ReportPoster.to(desk, aiohttp_client)).post

        forged = report("a", "ius")
        assert await post(forged, signed_report(secrets["b"], forged)) == 401
        stranger = report("zz", "ius")
        assert await post(stranger, signed_report(secrets["a"], stranger)) == 401
        elsewhere = report("a", "nope")
        assert await post(elsewhere, signed_report(secrets["a"], elsewhere)) == 401
        assert await post(b"{}", {"Content-Type": "application/json"}) == 400
        assert await post(b"x" * 20_000, {"Content-Type": "application/json"}) == 413

        held = desk.refusals.snapshot()
        body = page.render(page.snapshot(desk))
        assert set(held) == {"ius", None}  # epel refused nothing
        assert (held["ius"].count, held["ius"].status, held["ius"].mirror) == (2, 401, None)
        assert held["ius"].reason == "no such mirror here"
        assert held["ius"].peer == "127.0.0.1"
        assert (held[None].count, held[None].status) == (3, 413)
    desk.refusals.flush()  # as at shutdown (the daemon writes it a second after a change)

    recorded = read_refused(host.state_dir)
    assert recorded == {
        name: dataclasses.replace(entry, at=recorded[name].at) for name, entry in held.items()
    }
    assert abs(recorded["ius"].at - held["ius"].at) < 0.001
    status = host_status(Config(path=path, publishers=host))
    ius, epel = status["publishers"]
    assert ius["refused_reports"]["count"] == 2
    assert ius["refused_reports"]["last_reason"] == "no such mirror here"
    assert epel["refused_reports"] is None
    assert status["refused_reports"]["count"] == 3
    assert status["refused_reports"]["last_status"] == 413
    text = format_status(status)
    assert "refused reports: 2, the last at" in text
    assert "from 127.0.0.1: 401 no such mirror here" in text
    assert "reports naming no repository it has\n  refused reports: 3" in text

    # On the page: per repository in its section, the rest at the top.
    sections = dict(re.findall(r'<section [^>]*data-repo="(\w+)">(.*?)</section>', body, re.DOTALL))
    shown = r"Refused reports: 2; the last [\d.]+ s ago from 127\.0\.0\.1: 401 no such mirror here"
    assert re.search(shown, sections["ius"])
    assert "Refused reports" not in sections["epel"]
    top = body.split("<section", 1)[0]
    assert "Refused reports naming no repository here: 3" in top
    assert "413 body larger than 16384 bytes" in top

    # Never a secret: not in the answers, nor in the record.
    every = body + json.dumps(status) + text + (host.state_dir / STATE_NAME).read_text()
    for name, secret in secrets.items():
        assert (tmp_path / "secrets" / f"{name}.secret").read_text().strip() not in every
        assert base64.b64encode(secret.key).decode() not in every


async def test_a_forged_report_names_the_mirror_and_the_single_form_counts_all(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    """In the single form every refusal counts for its one tree; a bad signature names the
    mirror the report claimed to be, since the publisher has it."""
    (tmp_path / "repo").mkdir()
    path = publisher_toml(
        tmp_path, root=tmp_path / "repo", mirrors=[("a", "http://a/"), ("b", "http://b/")]
    )
    config = load_config(path)
    assert config.publisher is not None
    assert config.publishers is not None
    async with aiohttp.ClientSession() as session, public_session() as public:
        desk = reports.ReportDesk(config.publishers)
        desk.checkers[None] = Checker(Freshness(config.publisher), session, public=public)
        poster = await ReportPoster.to(desk, aiohttp_client)
        forged = report("a", None)
        assert await poster.post(forged, signed_report(mirror_secret(tmp_path, "b"), forged)) == 401
    desk.refusals.flush()
    (refused,) = read_refused(config.publishers.state_dir).values()
    assert (refused.count, refused.mirror) == (1, "a")
    assert refused.reason.startswith("bad signature: no valid v1 signature")
    shown = host_status(config)["publisher"]["refused_reports"]
    assert (shown["count"], shown["last_mirror"]) == (1, "a")
    assert "naming mirror a: 401 bad signature" in format_status(host_status(config))


def test_the_record_is_written_once_a_second_and_survives_a_restart(tmp_path: Path) -> None:
    """Outside an event loop each refusal is written at once; the record loads back, and an
    entry of the wrong shape is left out."""
    kept = RefusedReports(tmp_path, clock=lambda: 1_800_000_000.0)
    kept.refused("ius", "192.0.2.1", 401, "no such mirror here")
    kept.refused(None, "192.0.2.2", 400, "not a mirror.synced report")
    again = RefusedReports(tmp_path)
    assert again.snapshot() == {
        "ius": Refused(1, 1_800_000_000.0, 401, "no such mirror here", "192.0.2.1"),
        None: Refused(1, 1_800_000_000.0, 400, "not a mirror.synced report", "192.0.2.2"),
    }
    (tmp_path / STATE_NAME).write_text('{"repos": {"x": {"count": "no"}}, "overall": 3}')
    assert read_refused(tmp_path) == {}
