"""The `alice` console command: `alice serve` and `alice migrate`."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import ValidationError

from alice.core.config import describe_config_error, get_settings
from alice.core.logging import configure_logging, logging_config
from alice.core.metrics import MULTIPROC_ENV
from alice.core.protocol import http_protocol


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="alice", description="ALICE backend")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="apply the migrations, then serve")
    serve.add_argument("--host", default=None, help="default: ALICE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: ALICE_PORT or 8000")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    sub.add_parser("migrate", help="apply the Alembic migrations and exit")
    args = parser.parse_args(argv)

    try:
        settings = get_settings()
    except ValidationError as exc:
        parser.exit(2, f"alice: configuration error:\n{describe_config_error(exc)}\n")
    configure_logging(settings.log_format)
    from alice.core.migrate import upgrade

    upgrade(settings)
    logging.getLogger("alice").info("database migrated")
    if args.command == "migrate":
        return

    import uvicorn

    from alice.main import raise_open_file_limit

    raise_open_file_limit()
    # The secret must exist before the workers start, so that they all sign with one key.
    settings.signing_key()
    metrics_dir = _multiprocess_metrics_dir() if args.workers > 1 else None
    try:
        uvicorn.run(
            "alice.main:served_app",
            factory=True,
            host=args.host or settings.host,
            port=args.port or settings.port,
            workers=args.workers,
            # trusted proxies are handled in the app (ALICE_FORWARDED_ALLOW_IPS)
            proxy_headers=False,
            access_log=False,
            # Applied by uvicorn in this process and again in each worker it spawns.
            log_config=logging_config(settings.log_format),
            # httptools, with the request head (line and headers) bounded before the app.
            http=http_protocol(),
            # No `server: uvicorn` on responses (SPEC 8: none names the server software).
            server_header=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 10,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _multiprocess_metrics_dir() -> Path | None:
    """Several workers share one socket, so a scrape reaches any one of them: they keep their
    metrics in prometheus_client's multiprocess directory, which every worker sums on /metrics.
    An operator's PROMETHEUS_MULTIPROC_DIR is used (emptied of an earlier run's files, as the
    library asks); else a private one is made, and removed when the server stops (returned)."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    made = tempfile.mkdtemp(prefix="alice-metrics-")
    os.environ[MULTIPROC_ENV] = made  # inherited by the workers uvicorn spawns
    return Path(made)


if __name__ == "__main__":
    main()
