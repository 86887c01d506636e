"""The route index (alice.core.routing): a request reaches the route the router's own scan
would give it, having tried only the routes that can match its path."""

from __future__ import annotations

import uuid

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from alice.core.routing import RouteIndex, index_routes


class CountedRoute(Route):
    """A route that counts how often it was tried."""

    tried = 0

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        CountedRoute.tried += 1
        return super().matches(scope)


def _answer(name: str):  # noqa: ANN202 - an endpoint factory
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{name} {sorted(request.path_params.items())}")

    return endpoint


def _routes() -> list[BaseRoute]:
    return [
        Route("/a/{x}", _answer("a-param")),
        Route("/a/b", _answer("a-b")),  # declared after /a/{x}: never reached by GET /a/b
        Route("/c", _answer("c-get"), methods=["GET"]),
        Route("/c", _answer("c-post"), methods=["POST"]),
        Route("/d", _answer("d"), methods=["GET"]),
        Mount("/m", routes=[Route("/x", _answer("m-x"))]),
        Route("/e/x/", _answer("e-slash")),
        Route("/f/{n:int}", _answer("f-int")),
        Route("/f/last", _answer("f-last")),
        Route("/g", _answer("g-get"), methods=["GET"]),
        Route("/{anything}", _answer("catch-all"), methods=["PUT"]),
    ]


REQUESTS = [
    ("GET", "/a/b"),
    ("GET", "/a/zz"),
    ("GET", "/c"),
    ("POST", "/c"),
    ("HEAD", "/c"),
    ("DELETE", "/c"),  # 405: both /c routes match the path only
    ("POST", "/d"),
    ("GET", "/m/x"),
    ("GET", "/m/y"),
    ("GET", "/e/x"),  # redirected to /e/x/
    ("GET", "/e/x/"),
    ("GET", "/e"),  # 405: the catch-all matches the path, not the method
    ("GET", "/f/7"),
    ("GET", "/f/last"),
    ("GET", "/f/x"),
    ("PUT", "/g"),  # /g is GET only, the catch-all takes PUT
    ("GET", "/nowhere"),
    ("PUT", "/nowhere"),
]


async def _answers(app: Starlette) -> list[tuple[int, str, str | None, str | None]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        out = []
        for method, path in REQUESTS:
            r = await client.request(method, path)
            out.append((r.status_code, r.text, r.headers.get("allow"), r.headers.get("location")))
        return out


async def test_every_request_reaches_the_route_the_router_s_scan_gives_it() -> None:
    plain = Starlette(routes=_routes())
    indexed = Starlette(routes=_routes())
    index_routes(indexed.router)
    expected = await _answers(plain)
    assert await _answers(indexed) == expected
    # The cases the index must not get wrong, spelled out.
    by_request = dict(zip(REQUESTS, expected, strict=True))
    assert by_request["GET", "/a/b"][:2] == (200, "a-param [('x', 'b')]")
    assert by_request["DELETE", "/c"][0] == 405
    assert by_request["PUT", "/g"][:2] == (200, "catch-all [('anything', 'g')]")
    assert by_request["GET", "/e/x"][0] == 307
    assert by_request["GET", "/e"][0] == 405


async def test_a_static_path_tries_only_the_routes_that_can_match_it() -> None:
    routes: list[BaseRoute] = [
        CountedRoute(f"/static/{i}", _answer(str(i)), methods=["GET"]) for i in range(40)
    ]
    routes.insert(10, CountedRoute("/param/{x}", _answer("param")))
    app = Starlette(routes=routes)
    index_routes(app.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        CountedRoute.tried = 0
        r = await c.get("/static/39")
        assert (r.status_code, r.text) == (200, "39 []")
        assert CountedRoute.tried == 2  # the route with a parameter, then its own
        CountedRoute.tried = 0
        assert (await c.get("/param/q")).text == "param [('x', 'q')]"
        assert CountedRoute.tried == 1  # no static route can match /param/q


async def test_a_route_added_after_the_first_request_answers() -> None:
    app = Starlette(routes=_routes())
    index_routes(app.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/c")).text == "c-get []"
        app.router.routes.insert(0, Route("/c", _answer("c-new"), methods=["GET"]))
        app.router.routes.append(Route("/late", _answer("late")))
        assert (await c.get("/late")).text == "late []"
        assert (await c.get("/c")).text == "c-new []"


def _first_full_match(routes: list[BaseRoute], scope: Scope) -> BaseRoute | None:
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            return route
    return None


def test_every_route_of_alice_is_found_through_the_index_as_the_scan_finds_it(app) -> None:
    """ALICE's app finds its routes through the index, and for every route and method of its
    own table (path parameters filled in) the index's candidates give the route the router's
    full scan gives."""
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    checked = 0
    for route in app.router.routes:
        if not isinstance(route, Route):
            continue
        path = route.path_format
        for name in route.param_convertors:
            path = path.replace(f"{{{name}}}", str(uuid.uuid4()))
        for method in sorted(route.methods or ()):
            scope = {"type": "http", "method": method, "path": path, "root_path": ""}
            scanned = _first_full_match(app.router.routes, scope)
            assert scanned is not None, (method, path)
            assert _first_full_match(index.candidates(path), scope) is scanned, (method, path)
            checked += 1
    assert checked >= 30  # the whole API, not a corner of it


async def test_alice_answers_through_the_index_as_before(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/api/v1/auth/me")).status_code == 401
    r = await client.get("/nowhere")
    assert (r.status_code, r.json()["code"]) == (404, "NOT_FOUND")
    r = await client.delete("/health")  # the path is a route's, the method is not
    assert r.status_code == 405
