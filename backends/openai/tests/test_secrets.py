"""A secret in the base URL (bare user info, a password, a query value) or in `api_key`
appears in no repr, identity, cache key, log line or error, in any form a server may echo it:
as is, URL-encoded, JSON-escaped or base64-encoded (alone or inside a Basic auth header)."""

from __future__ import annotations

import base64
import json
import logging
import traceback
import urllib.parse

import pytest
from aiohttp import web

import dlgraph as dg
from dlgraph.engine.stage import request_key

TOKEN = "sk-T0k3n.with_special~chars+/="
QUOTED = urllib.parse.quote(TOKEN, safe="")
FORMS = {
    "as is": TOKEN,
    "URL-encoded": QUOTED,
    "JSON-escaped": json.dumps(TOKEN)[1:-1],
    "base64": base64.b64encode(TOKEN.encode()).decode(),
    "base64 inside Basic auth": base64.b64encode(f"{TOKEN}:".encode()).decode()[:-8],
}


class EchoServer:
    """Refuses every request with 401, echoing the key in every form it can find it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization", "")
        self.seen.append(f"{request.query_string} {authorization}")
        key = TOKEN
        message = (
            f"invalid key {key}; url-encoded {urllib.parse.quote(key, safe='')}; "
            f"base64 {base64.b64encode(key.encode()).decode()}; header {authorization}; "
            f"url {request.url}"
        )
        return web.json_response({"error": {"message": message}}, status=401)

    async def __aenter__(self) -> EchoServer:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.runner.cleanup()


PLACES = {
    "bare user info": ("http://{token}@127.0.0.1:{port}/v1", None),
    "password": ("http://user:{token}@127.0.0.1:{port}/v1", None),
    "query": ("http://127.0.0.1:{port}/v1?api-key={token}", None),
    "query among others": ("http://127.0.0.1:{port}/v1?tier=free&key={token}", None),
    "api_key": ("http://127.0.0.1:{port}/v1", TOKEN),
}


def leaks(text: str) -> list[str]:
    return [name for name, form in FORMS.items() if form.lower() in text.lower()]


@pytest.mark.parametrize("place", list(PLACES))
async def test_a_secret_anywhere_in_the_url_or_key_shows_nowhere(place, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    url, api_key = PLACES[place]
    async with EchoServer() as server:
        base_url = url.format(token=QUOTED, port=server.port)
        backend = dg.connect("openai", base_url=base_url, model="m", api_key=api_key)
        policy = dg.RetryPolicy(deadline_s=0.2, initial_wait_s=0.01, max_wait_s=0.01)
        async with dg.Engine(backend, retry=policy) as engine:
            with pytest.raises(dg.RequestRejected) as caught:
                await engine.generate("hi", node="n")
            shown = [repr(backend), repr(engine), backend.identity]
            shown.append(repr(request_key(backend.identity, dg.GenerateRequest("hi"))))
    assert len(server.seen) == 1
    error = caught.value
    assert "HTTP 401" in str(error) and "invalid key ***" in str(error)
    chain = "".join(traceback.format_exception(error))
    assert leaks("\n".join([*shown, str(error), chain, caplog.text])) == []


async def test_the_secret_in_the_url_still_reaches_the_server() -> None:
    async with EchoServer() as server:
        for url, _ in list(PLACES.values())[:4]:
            base_url = url.format(token=QUOTED, port=server.port)
            backend = dg.connect("openai", base_url=base_url, model="m")
            async with backend:
                with pytest.raises(dg.RequestRejected):
                    await backend.generate(dg.GenerateRequest("hi"))
    query_or_auth = [urllib.parse.unquote(seen) for seen in server.seen]
    assert TOKEN in query_or_auth[2] and TOKEN in query_or_auth[3]  # the query went along
    assert "tier=free" in query_or_auth[3]
    basic = [base64.b64decode(seen.split("Basic ")[1]).decode() for seen in server.seen[:2]]
    assert basic == [f"{TOKEN}:", f"user:{TOKEN}"]  # the user info became Basic auth


@pytest.mark.parametrize(
    "base_url",
    ["127.0.0.1:8000/v1", "localhost:8000/v1", f"{QUOTED}@127.0.0.1:8000/v1", "ftp://host/v1"],
)
def test_a_base_url_without_http_is_refused_at_once_and_shows_no_secret(base_url) -> None:
    with pytest.raises(dg.BackendUnavailable, match="expected http:// or https:// and a host"):
        dg.connect("openai", base_url=base_url, model="m")
    try:
        dg.connect("openai", base_url=base_url, model="m")
    except dg.BackendUnavailable as error:
        assert leaks(str(error)) == []
