"""The app's routes found by path, before they are tried.

Starlette finds a request's route by trying every route in order (a regular expression, the
method, and with FastAPI a look-up in the scope each), ~3 µs a route under load here: the
17th route, `GET /chat/conversations`, paid ~55 µs of its ~480 µs to be found (14 % of a
py-spy profile of `wrk` on it), `/health`, the 28th, more. `RouteIndex` sits where the router
starts (`router.middleware_stack`) and tries only the routes that can match the request's
path: those declared for exactly that path, and every route with a parameter or a mount, in
their order. A route without a parameter matches its own path only, so the first full match
among them is the first full match of the whole list. Anything else (a wrong method, no route,
a missing slash, a request under a root path) goes to the router's own scan, which answers it
as it always did."""

from __future__ import annotations

from typing import TypeGuard

from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send


def _static(route: BaseRoute) -> TypeGuard[Route]:
    """A route without a parameter: it matches its own path only."""
    return isinstance(route, Route) and not route.param_convertors


class RouteIndex:
    """The router's routes by path: built at the first request, and again at the first one
    after the number of routes changed (a route replaced in place is not seen)."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._count = -1
        self._by_path: dict[str, list[BaseRoute]] = {}
        self._dynamic: list[BaseRoute] = []

    def _build(self) -> None:
        routes = list(self._router.routes)
        paths = {route.path for route in routes if _static(route)}
        self._by_path = {
            path: [r for r in routes if not _static(r) or r.path == path] for path in paths
        }
        self._dynamic = [r for r in routes if not _static(r)]
        self._count = len(routes)

    def candidates(self, path: str) -> list[BaseRoute]:
        """The routes, in order, that can match `path`."""
        if len(self._router.routes) != self._count:
            self._build()
        return self._by_path.get(path, self._dynamic)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Behind a root path the router matches the path below it: its own scan does that.
        if scope["type"] == "http" and not scope.get("root_path"):
            for route in self.candidates(scope["path"]):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self._router)
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await self._router.app(scope, receive, send)


def index_routes(router: Router) -> None:
    """Find the router's routes through a `RouteIndex` (see the module)."""
    router.middleware_stack = RouteIndex(router)
