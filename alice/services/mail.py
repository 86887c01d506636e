"""Sending e-mail (SPEC section 13): by SMTP when ALICE_SMTP_URL is set, else, in development,
as `.eml` files in ALICE_MAIL_OUTBOX. Production without SMTP has no mailer at all (the
routes that need one answer 503 MAIL_UNAVAILABLE).

SMTP goes through aiosmtplib: `smtp://` is STARTTLS, required (never `start_tls=None`, which
would go on in clear when a man in the middle strips the STARTTLS advertisement), `smtps://`
implicit TLS; certificates are verified against the system's trust store (`SSL_CERT_FILE`
points OpenSSL at another bundle). aiosmtplib's timeout is per socket operation, so each
send is also bounded as a whole by ALICE_SMTP_TIMEOUT_SECONDS."""

from __future__ import annotations

import asyncio
import html
import logging
import os
import time
import uuid
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from alice.core.config import Settings

log = logging.getLogger("alice.mail")


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True)
class SmtpMailer:
    hostname: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    timeout: float

    @classmethod
    def from_url(cls, url: str, timeout: float) -> SmtpMailer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            # Names the setting and the rule, never the value (it may hold a password).
            raise ValueError("ALICE_SMTP_URL must be smtp://[user:pass@]host[:port] or smtps://…")
        implicit = parts.scheme == "smtps"
        return cls(
            hostname=parts.hostname,
            port=parts.port or (465 if implicit else 587),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
            timeout=timeout,
        )

    async def send(self, message: EmailMessage) -> None:
        async with asyncio.timeout(self.timeout):
            await aiosmtplib.send(
                message,
                hostname=self.hostname,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.implicit_tls,
                start_tls=False if self.implicit_tls else True,
                timeout=self.timeout,
            )


@dataclass(frozen=True)
class OutboxMailer:
    """Development without SMTP: each e-mail one `.eml` file (mode 0600) in the outbox."""

    folder: Path

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._write, message.as_bytes())

    def _write(self, data: bytes) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = self.folder / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4()}.eml"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def make_mailer(settings: Settings) -> Mailer | None:
    """The mailer the settings ask for; None in production without SMTP."""
    if settings.smtp_url is not None:
        url = settings.smtp_url.get_secret_value()
        return SmtpMailer.from_url(url, settings.smtp_timeout_seconds)
    if settings.env == "production":
        return None
    return OutboxMailer(settings.mail_outbox)


def build_message(
    settings: Settings, to: str, subject: str, text: str, html_body: str
) -> EmailMessage:
    """A multipart/alternative e-mail: a plain-text part and an HTML part."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = Address(addr_spec=to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    # The domain given: make_msgid() would otherwise look up this host's FQDN (DNS).
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(text)
    message.add_alternative(html_body, subtype="html")
    return message


def reset_message(settings: Settings, to: str, token: str) -> EmailMessage:
    """The password-reset e-mail: a link `ALICE_PUBLIC_URL/#reset=<token>` (in the fragment,
    which browsers never send to a server or put in a Referer)."""
    link = f"{settings.public_url.rstrip('/')}/#reset={token}"
    minutes = f"{settings.password_reset_minutes:g}"
    text = (
        "Someone asked to reset the password of your ALICE account.\n\n"
        f"To choose a new password, open this link within {minutes} minutes:\n\n{link}\n\n"
        "It works once. If you did not ask for it, ignore this e-mail: "
        "your password stays as it is.\n"
    )
    body = (
        "<!doctype html><html><body>"
        "<p>Someone asked to reset the password of your ALICE account.</p>"
        f"<p>To choose a new password, open this link within {minutes} minutes:</p>"
        f'<p><a href="{html.escape(link)}">Reset your password</a></p>'
        "<p>It works once. If you did not ask for it, ignore this e-mail: "
        "your password stays as it is.</p>"
        "</body></html>"
    )
    return build_message(settings, to, "Reset your ALICE password", text, body)


def describe_failure(exc: BaseException) -> str:
    """What may be logged of a failed send: the kind of error and the SMTP reply code, never
    the message (it holds the reset link)."""
    code = getattr(exc, "code", None)
    kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
    return f"{kind} (SMTP {code})" if isinstance(code, int) else kind
