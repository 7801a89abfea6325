"""Serve a trained network from an aiohttp web app: POST /predict {"input": ...}.

    python examples/web_app.py --network runs/navigate/network.json --port 8080
    curl -s localhost:8080/predict -d '{"input": "Always face forward. Take 1 step left. ..."}'

One Engine lives as long as the app (opened on startup, closed on cleanup) and serves every
request from the app's own event loop: dlgraph never starts a loop of its own.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from aiohttp import web

import dlgraph as dg

NETWORK = web.AppKey("network", dg.Network)
ENGINE = web.AppKey("engine", dg.Engine)


async def predict(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        text = body["input"]
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'expected a JSON body {"input": "..."}'}, status=400)
    if not isinstance(text, str) or not text.strip():
        return web.json_response({"error": "'input' must be non-empty text"}, status=400)
    try:
        [output] = await request.app[NETWORK].predict(request.app[ENGINE], [text])
    except dg.BackendError as error:
        return web.json_response({"error": str(error)}, status=502)
    return web.json_response({"output": output})


def make_app(network: dg.Network, backend: dg.Backend) -> web.Application:
    network.validate()
    app = web.Application()
    app[NETWORK] = network

    async def engine_context(app: web.Application) -> AsyncIterator[None]:
        async with dg.Engine(backend) as engine:
            app[ENGINE] = engine
            yield

    app.cleanup_ctx.append(engine_context)
    app.router.add_post("/predict", predict)
    return app


def default_network() -> dg.Network:
    net = dg.Network()
    net.add_node(
        "answer",
        prompt="Decide whether the steps lead back to the starting point.",
        classes=["yes|Yes", "no|No"],
    )
    net.add_edge(dg.INPUT, "answer")
    return net


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--network", help="a saved network (default: an untrained DLN-1 for navigation)"
    )
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    net = dg.Network.load(args.network) if args.network else default_network()
    web.run_app(make_app(net, dg.connect(args.backend)), host=args.host, port=args.port)
