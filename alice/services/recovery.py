"""PasswordRecovery: the forgotten password of SPEC section 13.

`forgot` answers before it looks anything up: the lookup, the token and the e-mail run in a
task after the response, the same code for a known and an unknown address, so neither the
body nor the time of the answer tells them apart. A slow or dead SMTP server delays only that
task; its failure is logged (never the token) and counted in /metrics.

A token is 32 random bytes (URL-safe), kept only as its SHA-256, one per user (a newer
replaces an older), valid ALICE_PASSWORD_RESET_MINUTES, consumed by deleting its row in the
transaction that sets the password, so it works once even when two resets race."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alice.core.config import Settings
from alice.core.database import transaction
from alice.core.errors import InvalidTokenError, MailUnavailableError
from alice.core.passwords import check_not_local_part
from alice.core.security import hash_token, utcnow
from alice.models import PasswordReset, User
from alice.services.accounts import AccountService
from alice.services.auth import ClientInfo, TokenPair
from alice.services.mail import Mailer, describe_failure, reset_message

log = logging.getLogger("alice.recovery")

TOKEN_BYTES = 32


class PasswordRecovery:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        accounts: AccountService,
        mailer: Mailer | None,
        settings: Settings,
        on_mail: Callable[[str, str], None] = lambda kind, outcome: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._accounts = accounts
        self._mailer = mailer
        self._settings = settings
        self._lifetime = timedelta(minutes=settings.password_reset_minutes)
        self._on_mail = on_mail
        self._tasks: set[asyncio.Task[None]] = set()
        self.clock = clock

    def check_available(self) -> None:
        """503 MAIL_UNAVAILABLE where no e-mail can be sent (production without SMTP)."""
        if self._mailer is None:
            raise MailUnavailableError()

    async def forgot(self, email: str) -> None:
        """Start the reset of `email`'s password, if it is a user's, in the background: call
        it once the answer is on its way."""
        task = asyncio.create_task(self._send_reset(email), name="alice-password-reset")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace: float | None = None) -> None:
        """Wait for the resets in flight (tests; at shutdown, cancelled after `grace` s)."""
        pending = set(self._tasks)
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()

    async def _send_reset(self, email: str) -> None:
        assert self._mailer is not None
        try:
            issued = await self._issue(email)
        except Exception:  # noqa: BLE001 - a background task: nobody else would see it
            log.exception("password reset not started: the token could not be stored")
            self._on_mail("password_reset", "failed")
            return
        if issued is None:
            return
        token, user_email = issued
        try:
            await self._mailer.send(reset_message(self._settings, user_email, token))
        except Exception as exc:  # noqa: BLE001 - SMTP down, slow or refusing: log and count
            log.warning("password reset e-mail not sent: %s", describe_failure(exc))
            self._on_mail("password_reset", "failed")
            return
        log.info("password reset e-mail sent")
        self._on_mail("password_reset", "sent")

    async def _issue(self, email: str) -> tuple[str, str] | None:
        """A new token for the active user of `email` (replacing any older): (token, e-mail);
        None when there is no such user."""
        now = self.clock()
        async with transaction(self._sessions) as session:
            user = (
                await session.execute(
                    select(User.id, User.email).where(User.email == email, User.is_active)
                )
            ).first()
            if user is None:
                return None
            token = secrets.token_urlsafe(TOKEN_BYTES)
            await session.execute(delete(PasswordReset).where(PasswordReset.user_id == user.id))
            session.add(
                PasswordReset(
                    user_id=user.id,
                    token_hash=hash_token(token),
                    created_at=now,
                    expires_at=now + self._lifetime,
                )
            )
        log.info("password reset token issued user_id=%s", user.id)
        return token, str(user.email)

    async def reset(self, token: str, new_password: str, client: ClientInfo) -> TokenPair:
        """Set the password of the token's user: every session ends, a new one starts. An
        unknown, used or expired token is INVALID_TOKEN; a password the rules refuse leaves
        the token usable."""
        token_hash = hash_token(token)
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(PasswordReset.user_id, PasswordReset.expires_at, User.email)
                    .join(User, User.id == PasswordReset.user_id)
                    .where(PasswordReset.token_hash == token_hash, User.is_active)
                )
            ).first()
        if row is None or row.expires_at <= self.clock():
            log.info("password reset refused: unknown, used or expired token")
            raise InvalidTokenError()
        check_not_local_part(new_password, row.email, "body.new_password")
        pair = await self._accounts.set_password(
            row.user_id, new_password, client, consume_reset=(token_hash, self.clock())
        )
        log.info("password reset user_id=%s", row.user_id)
        return pair
