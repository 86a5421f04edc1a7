"""``GET /v1/changes/NAME?from=OLD`` and ``GET /v1/manifest/NAME`` on the publisher's
listen (docs/design.md#changes): the change from marker OLD's manifest to the current one,
and the current manifest (with ``?marker=``, a kept one: ``mirrorhook verify``), each
signed ``v1a`` over the response body with the Standard Webhooks headers, so that a mirror
verifies it with the key it already trusts.

``NAME`` is the repository; in the single form the publisher's ``name`` or the root
folder's name (as ``?repo=`` elsewhere). Without ``signing_key_file`` nothing is served.
An OLD no manifest is kept for answers 404: the mirror does a full sync.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Protocol

from aiohttp import web

from mirrorhook import signing
from mirrorhook.keys import SigningKey
from mirrorhook.manifest_format import encode_manifest
from mirrorhook.manifest_keeper import ManifestKeeper
from mirrorhook.message import CHANGES_PATH, MANIFEST_PATH
from mirrorhook.publisher_config import PublisherConfig, PublisherHost


class Manifests(Protocol):
    """The running trees and their manifests (the report desk)."""

    manifests: dict[str | None, ManifestKeeper]

    def running(self) -> PublisherHost: ...


MANIFESTS: web.AppKey[Manifests] = web.AppKey("manifests")


def add_routes(app: web.Application, upstream: Manifests) -> None:
    app[MANIFESTS] = upstream
    app.router.add_get(CHANGES_PATH + "/{name}", handle_changes)
    app.router.add_get(MANIFEST_PATH + "/{name}", handle_manifest)


async def handle_changes(request: web.Request) -> web.Response:
    """The signed change from ``?from=`` to the current marker."""
    keeper, key = _keeper(request)
    old = request.query.get("from")
    if not old:
        raise web.HTTPBadRequest(text="name the marker you have: ?from=VALUE\n")
    change = await keeper.change_from(old)
    if change is None:
        raise web.HTTPNotFound(text=f"no manifest of marker {old!r} is kept here: do a full sync\n")
    return _signed(change.encode(), key, "application/json")


async def handle_manifest(request: web.Request) -> web.Response:
    """The signed current manifest (its on-disk form), or with ``?marker=`` a kept one."""
    keeper, key = _keeper(request)
    if value := request.query.get("marker"):
        manifest = await keeper.manifest_of(value)
        if manifest is None:
            raise web.HTTPNotFound(text=f"no manifest of marker {value!r} is kept here\n")
    elif (manifest := keeper.current) is None:
        raise web.HTTPServiceUnavailable(text="no manifest yet\n", headers={"Retry-After": "10"})
    body = await asyncio.to_thread(encode_manifest, manifest)
    return _signed(body, key, "application/octet-stream")


def _keeper(request: web.Request) -> tuple[ManifestKeeper, SigningKey]:
    upstream = request.app[MANIFESTS]
    publishers = upstream.running()
    key = publishers.signing_key
    if key is None:
        raise web.HTTPNotFound(
            text="this upstream signs with shared secrets only; changes need its "
            "signing_key_file (v1a)\n"
        )
    tree = _tree(publishers, request.match_info["name"])
    keeper = upstream.manifests.get(tree.repo)
    if keeper is None:
        raise web.HTTPServiceUnavailable(
            text="the repository is not running\n", headers={"Retry-After": "10"}
        )
    return keeper, key


def _tree(publishers: PublisherHost, name: str) -> PublisherConfig:
    if (tree := publishers.called(name)) is None:
        raise web.HTTPNotFound(
            text=f"no repository {name!r} here; there are {', '.join(publishers.names())}\n"
        )
    return tree


def _signed(body: bytes, key: SigningKey, content_type: str) -> web.Response:
    headers = signing.signed_headers(key, f"chg_{uuid.uuid4().hex}", int(time.time()), body)
    headers["Cache-Control"] = "no-store"
    return web.Response(body=body, content_type=content_type, headers=headers)
