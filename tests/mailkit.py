"""A real SMTP server for tests (aiosmtpd, on a free loopback port, in the test's own loop),
with STARTTLS or implicit TLS on a self-signed certificate made for the test by openssl."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

RESET_LINK = re.compile(r"(https?://[^\s\"<]+/#reset=([A-Za-z0-9_-]+))")


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def make_certificate(folder: Path) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost (a P-256 key: quick to make)."""
    cert, key = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)


@dataclass
class Inbox:
    """What the server received: each message parsed, with how its session was secured."""

    messages: asyncio.Queue[tuple[EmailMessage, dict[str, Any]]] = field(
        default_factory=asyncio.Queue
    )
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        info = {
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "rcpt_tos": list(envelope.rcpt_tos),
            "authenticated": bool(session.authenticated),
        }
        await self.messages.put((message, info))  # type: ignore[arg-type]
        return "250 OK"

    async def next(self, timeout: float = 10) -> tuple[EmailMessage, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            return await self.messages.get()

    def authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        login = (auth_data.login.decode(), auth_data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == ("mailer", "p@ss word"))


@asynccontextmanager
async def smtp_server(cert: Certificate, *, implicit_tls: bool) -> AsyncIterator[tuple[Inbox, int]]:
    """An SMTP server on 127.0.0.1:<free port>: STARTTLS required before AUTH and MAIL, or
    TLS from the first byte."""
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    ctx = cert.server_context()

    def factory() -> SMTP:
        if implicit_tls:
            return SMTP(inbox, authenticator=inbox.authenticator, auth_require_tls=False)
        return SMTP(
            inbox,
            tls_context=ctx,
            require_starttls=True,
            authenticator=inbox.authenticator,
            auth_require_tls=True,
        )

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx if implicit_tls else None)
    port = server.sockets[0].getsockname()[1]
    try:
        yield inbox, port
    finally:
        server.close()


def reset_token(message: EmailMessage) -> tuple[str, str, str]:
    """(link, token, html) of a reset e-mail, from its plain-text part (the HTML part must
    carry the same link)."""
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    text, html = plain.get_content(), rich.get_content()
    found = RESET_LINK.search(text)
    assert found, text
    return found.group(1), found.group(2), html
