"""The `alice` console command: `alice serve` and `alice migrate`."""

from __future__ import annotations

import argparse
import logging

from alice.core.config import get_settings
from alice.core.logging import configure_logging


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
    except ValueError as exc:
        parser.exit(2, f"alice: configuration error: {exc}\n")
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
    uvicorn.run(
        "alice.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        proxy_headers=False,  # trusted proxies are handled in the app (ALICE_FORWARDED_ALLOW_IPS)
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )


if __name__ == "__main__":
    main()
