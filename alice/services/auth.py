"""AuthService: accounts, logins and the refresh-token families of SPEC section 4."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alice.core.config import Settings
from alice.core.database import Direct, constant, rowcount, transaction
from alice.core.errors import (
    AccountDisabledError,
    AuthenticationFailedError,
    EmailAlreadyExistsError,
    InvalidTokenError,
)
from alice.core.security import PasswordHashing, TokenCodec, hash_token, utcnow
from alice.models import PasswordReset, RefreshToken, Session, User

log = logging.getLogger("alice.auth")

_USER_COLUMNS = (
    User.id,
    User.email,
    User.display_name,
    User.is_active,
    User.token_version,
    User.created_at,
)
# The user of an access token and its session in one statement: an ended session refuses its
# access tokens with no second round trip (SPEC section 13).
_USER_OF_SESSION = constant(
    select(*_USER_COLUMNS)
    .join(
        Session,
        and_(
            Session.id == bindparam("session_id"),
            Session.user_id == User.id,
            Session.revoked_at.is_(None),
        ),
    )
    .where(User.id == bindparam("user_id"))
)


@dataclass(frozen=True, slots=True)
class CurrentUser:
    """The user a request acts for, as loaded for this request."""

    id: uuid.UUID
    email: str
    display_name: str
    is_active: bool
    token_version: int
    created_at: datetime
    # The session (refresh-token family) of the access token the request came with.
    session_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a session was started from: the client IP (after the trusted-proxy rule) and
    its user agent, as the request gave them."""

    ip: str | None = None
    user_agent: str | None = None


USER_AGENT_MAX = 200


def clean_user_agent(value: str | None) -> str | None:
    """At most 200 characters, control characters (NUL included: PostgreSQL text refuses it)
    dropped."""
    if not value:
        return None
    cleaned = "".join(c for c in value if c.isprintable())[:USER_AGENT_MAX]
    return cleaned or None


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class AuthService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        direct: Direct,
        hashing: PasswordHashing,
        codec: TokenCodec,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self._direct = direct
        self._hashing = hashing
        self._codec = codec
        self._grace = timedelta(seconds=settings.refresh_reuse_grace_seconds)
        self._session_max = timedelta(days=settings.session_max_days)

    def close(self) -> None:
        self._hashing.close()

    async def register(
        self,
        email: str,
        password: str,
        display_name: str | None,
        client: ClientInfo | None = None,
    ) -> TokenPair:
        """Create the account (email already lower-cased) and log it in."""
        password_hash = await self._hashing.hash(password)
        user = User(
            id=uuid.uuid4(),
            email=email,
            password_hash=password_hash,
            display_name=display_name or email.split("@", 1)[0][:100],
            is_active=True,
            token_version=0,
            created_at=utcnow(),
        )
        try:
            async with transaction(self._sessions) as session:
                session.add(user)
                await session.flush()
                pair = self.start_session(session, user.id, user.token_version, client)
        except IntegrityError:
            raise EmailAlreadyExistsError() from None
        log.info("register user_id=%s", user.id)
        return pair

    async def login(self, email: str, password: str, client: ClientInfo | None = None) -> TokenPair:
        """Check the credentials and start a new refresh-token family.

        An unknown email costs a verify against a dummy hash, so it answers like a wrong
        password in status, body and time."""
        email = email.strip().lower()
        async with self._sessions() as session:
            user = (await session.execute(select(User).where(User.email == email))).scalar()
        ok = await self._hashing.verify(user.password_hash if user else None, password)
        if user is None or not ok:
            log.info("login failed")
            raise AuthenticationFailedError()
        if not user.is_active:
            log.info("login refused user_id=%s: disabled", user.id)
            raise AccountDisabledError()
        new_hash = None
        if self._hashing.needs_rehash(user.password_hash):
            new_hash = await self._hashing.hash(password)
        async with transaction(self._sessions) as session:
            if new_hash:
                await session.execute(
                    update(User).where(User.id == user.id).values(password_hash=new_hash)
                )
            pair = self.start_session(session, user.id, user.token_version, client)
        log.info("login user_id=%s", user.id)
        return pair

    async def refresh(self, token: str) -> TokenPair:
        """Rotate: revoke the presented token and issue a new pair in its family, atomically.

        Of simultaneous refreshes with one token exactly one wins (a conditional update).
        A token presented after its rotation is refused; past the grace window that reuse
        also revokes the whole family (RFC 9700 reuse detection)."""
        claims = self._codec.read_refresh(token)
        token_hash = hash_token(token)
        now = utcnow()
        async with transaction(self._sessions) as session:
            won = await session.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.token_hash == token_hash,
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > now,
                )
                .values(rotated_at=now, revoked_at=now)
            )
            if rowcount(won) == 1:
                row = (
                    await session.execute(
                        select(RefreshToken).where(RefreshToken.token_hash == token_hash)
                    )
                ).scalar_one()
                if row.id != claims.jti or row.family_id != claims.family_id:
                    raise InvalidTokenError()
                touched = await session.execute(
                    update(Session)
                    .where(
                        Session.id == row.family_id,
                        Session.user_id == row.user_id,
                        Session.revoked_at.is_(None),
                    )
                    .values(last_used_at=now)
                )
                if rowcount(touched) != 1:
                    raise InvalidTokenError()  # the session was ended (rolls the rotation back)
                user = await self._load_user(session, row.user_id)
                if user is None:
                    raise InvalidTokenError()
                if not user.is_active:
                    raise AccountDisabledError()
                return self._issue(
                    session, user.id, user.token_version, row.family_id, row.family_expires_at
                )
        await self._refused_refresh(token_hash, now)
        raise InvalidTokenError()

    async def _refused_refresh(self, token_hash: bytes, now: datetime) -> None:
        async with transaction(self._sessions) as session:
            row = (
                await session.execute(
                    select(RefreshToken).where(RefreshToken.token_hash == token_hash)
                )
            ).scalar()
            if row is None or row.rotated_at is None:
                return
            if now - row.rotated_at <= self._grace:
                log.info("refresh reuse within grace family_id=%s", row.family_id)
                return
            revoked = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await session.execute(
                update(Session)
                .where(Session.id == row.family_id, Session.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            log.warning(
                "refresh token reuse detected: family revoked user_id=%s family_id=%s tokens=%s",
                row.user_id,
                row.family_id,
                rowcount(revoked),
            )

    async def user_of_refresh(self, token: str) -> uuid.UUID:
        """The user of a live (not revoked, not expired) refresh token: a logout by cookie."""
        claims = self._codec.read_refresh(token)
        async with self._sessions() as session:
            user_id = await session.scalar(
                select(RefreshToken.user_id).where(
                    RefreshToken.token_hash == hash_token(token),
                    RefreshToken.id == claims.jti,
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > utcnow(),
                )
            )
        if user_id is None:
            raise InvalidTokenError()
        return user_id

    async def logout(self, user_id: uuid.UUID) -> None:
        """Revoke every refresh token of the user and raise the token version, so every
        access token issued before now is refused too."""
        async with transaction(self._sessions) as session:
            await self.end_all_sessions(session, user_id, utcnow())
        log.info("logout user_id=%s", user_id)

    async def end_all_sessions(
        self, session: AsyncSession, user_id: uuid.UUID, now: datetime
    ) -> int:
        """In the caller's transaction: revoke every session and refresh token of the user,
        forget any password-reset token, and raise the token version (so every access token
        issued before is refused). Returns the new token version."""
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await session.execute(
            update(Session)
            .where(Session.user_id == user_id, Session.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await session.execute(delete(PasswordReset).where(PasswordReset.user_id == user_id))
        version = await session.scalar(
            update(User)
            .where(User.id == user_id)
            .values(token_version=User.token_version + 1)
            .returning(User.token_version)
        )
        return int(version or 0)

    async def authenticate(self, access_token: str) -> CurrentUser:
        """The user an access token acts for: it exists, is active, and the token is current."""
        claims = self._codec.read_access(access_token)
        # A plain read, not an ORM session: this runs on every authenticated request, and the
        # session's own transaction bookkeeping cost four times the query. On SQLite it is
        # answered from memory while nothing at all has been committed since the last read
        # (ending a session is a commit, so it is seen at once, by every process).
        row = await self._direct.first_unless_unchanged(
            (claims.user_id, claims.session_id),
            _USER_OF_SESSION,
            {"user_id": claims.user_id, "session_id": claims.session_id},
        )
        user = CurrentUser(*row, session_id=claims.session_id) if row else None
        if user is None or user.token_version != claims.version:
            raise InvalidTokenError()
        if not user.is_active:
            raise AccountDisabledError()
        return user

    async def _load_user(self, session: AsyncSession, user_id: uuid.UUID) -> CurrentUser | None:
        row = (await session.execute(select(*_USER_COLUMNS).where(User.id == user_id))).first()
        return CurrentUser(*row) if row else None

    def start_session(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        version: int,
        client: ClientInfo | None = None,
    ) -> TokenPair:
        """In the caller's transaction: a new session (refresh-token family) and its first
        token pair."""
        now = utcnow()
        client = client or ClientInfo()
        family_id = uuid.uuid4()
        ends = now + self._session_max
        session.add(
            Session(
                id=family_id,
                user_id=user_id,
                created_at=now,
                last_used_at=now,
                expires_at=ends,
                ip=client.ip[:64] if client.ip else None,
                user_agent=clean_user_agent(client.user_agent),
            )
        )
        return self._issue(session, user_id, version, family_id, ends, now)

    def _issue(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        version: int,
        family_id: uuid.UUID,
        family_ends: datetime,
        now: datetime | None = None,
    ) -> TokenPair:
        now = now or utcnow()
        refresh = self._codec.make_refresh(user_id, family_id, now, family_ends)
        session.add(
            RefreshToken(
                id=refresh.jti,
                user_id=user_id,
                family_id=family_id,
                token_hash=refresh.token_hash,
                created_at=now,
                expires_at=refresh.expires_at,
                family_expires_at=family_ends,
            )
        )
        return TokenPair(
            access_token=self._codec.make_access(user_id, version, now, family_id),
            refresh_token=refresh.token,
            expires_in=int(self._codec.access_ttl.total_seconds()),
        )
