"""AccountService: the rest of a user's life (SPEC section 13): profile, password change,
sessions seen and ended."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alice.core.config import Settings
from alice.core.database import rowcount, transaction
from alice.core.errors import (
    InvalidPasswordError,
    InvalidTokenError,
    SessionNotFoundError,
    ValidationFailedError,
)
from alice.core.passwords import check_not_local_part
from alice.core.security import PasswordHashing, utcnow
from alice.models import PasswordReset, RefreshToken, Session, User
from alice.services.auth import AuthService, ClientInfo, CurrentUser, TokenPair

log = logging.getLogger("alice.accounts")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool


class AccountService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hashing: PasswordHashing,
        auth: AuthService,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._hashing = hashing
        self._auth = auth
        self._refresh_ttl = timedelta(days=settings.refresh_token_days)
        self.clock = clock

    async def update_profile(self, user: CurrentUser, display_name: str) -> CurrentUser:
        """Set the display name; the profile as it now is."""
        async with transaction(self._sessions) as session:
            changed = await session.execute(
                update(User).where(User.id == user.id).values(display_name=display_name)
            )
            if rowcount(changed) != 1:
                raise InvalidTokenError()  # deleted since its token was checked
        log.info("profile updated user_id=%s", user.id)
        return CurrentUser(
            id=user.id,
            email=user.email,
            display_name=display_name,
            is_active=user.is_active,
            token_version=user.token_version,
            created_at=user.created_at,
            session_id=user.session_id,
        )

    async def check_password(self, user_id: uuid.UUID, password: str) -> str:
        """The user's e-mail when `password` is theirs; 403 INVALID_PASSWORD otherwise."""
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(User.password_hash, User.email).where(User.id == user_id)
                )
            ).first()
        ok = await self._hashing.verify(row.password_hash if row else None, password)
        if row is None or not ok:
            log.info("wrong password given user_id=%s", user_id)
            raise InvalidPasswordError()
        return str(row.email)

    async def change_password(
        self, user: CurrentUser, current: str, new: str, client: ClientInfo
    ) -> TokenPair:
        """Set a new password: every session and access token of the user ends, and the
        caller gets a new session."""
        email = await self.check_password(user.id, current)
        check_not_local_part(new, email, "body.new_password")
        if new == current:
            raise ValidationFailedError("body.new_password", "must differ from the current one")
        return await self.set_password(user.id, new, client)

    async def set_password(
        self,
        user_id: uuid.UUID,
        new: str,
        client: ClientInfo,
        consume_reset: tuple[bytes, datetime] | None = None,
    ) -> TokenPair:
        """Store the new password's hash, end every session, start one: one transaction.
        With `consume_reset` (a reset token's hash, now) that token is used up in it too, or
        nothing happens (INVALID_TOKEN): of two resets with one token, one wins."""
        password_hash = await self._hashing.hash(new)
        async with transaction(self._sessions) as session:
            if consume_reset is not None:
                token_hash, now = consume_reset
                used = await session.execute(
                    delete(PasswordReset).where(
                        PasswordReset.token_hash == token_hash,
                        PasswordReset.user_id == user_id,
                        PasswordReset.expires_at > now,
                    )
                )
                if rowcount(used) != 1:
                    raise InvalidTokenError()
            version = await self._auth.end_all_sessions(session, user_id, self.clock())
            await session.execute(
                update(User).where(User.id == user_id).values(password_hash=password_hash)
            )
            pair = self._auth.start_session(session, user_id, version, client)
        log.info("password set user_id=%s: every session ended", user_id)
        return pair

    async def list_sessions(self, user: CurrentUser) -> list[SessionInfo]:
        """The user's live sessions, newest first."""
        now = self.clock()
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Session)
                    .where(
                        Session.user_id == user.id,
                        Session.revoked_at.is_(None),
                        Session.expires_at > now,
                        # Its newest refresh token has not expired unused.
                        Session.last_used_at > now - self._refresh_ttl,
                    )
                    .order_by(Session.created_at.desc(), Session.id.desc())
                )
            ).scalars()
            return [
                SessionInfo(
                    id=s.id,
                    created_at=s.created_at,
                    last_used_at=s.last_used_at,
                    expires_at=s.expires_at,
                    user_agent=s.user_agent,
                    ip=s.ip,
                    current=s.id == user.session_id,
                )
                for s in rows
            ]

    async def end_session(self, user: CurrentUser, session_id: uuid.UUID) -> None:
        """End one session: its refresh tokens revoked, its access tokens refused at once.
        Someone else's, a missing or an ended one is SESSION_NOT_FOUND."""
        now = self.clock()
        async with transaction(self._sessions) as session:
            ended = await session.execute(
                update(Session)
                .where(
                    Session.id == session_id,
                    Session.user_id == user.id,
                    Session.revoked_at.is_(None),
                    Session.expires_at > now,
                )
                .values(revoked_at=now)
            )
            if rowcount(ended) != 1:
                raise SessionNotFoundError()
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.family_id == session_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        log.info("session ended user_id=%s session_id=%s", user.id, session_id)
