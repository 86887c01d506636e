"""AccountData: the account as a whole (SPEC section 13): deleted with everything in it, or
exported as one JSON document (GDPR articles 17 and 20)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alice.core.database import transaction
from alice.core.security import utcnow
from alice.models import (
    Conversation,
    Message,
    MessageStatus,
    PasswordReset,
    RefreshToken,
    Session,
    User,
)
from alice.models.message import SIBLING_COUNT
from alice.schemas.auth import UserResponse
from alice.schemas.chat import ConversationResponse
from alice.services.accounts import AccountService
from alice.services.auth import CurrentUser
from alice.services.chat import message_response
from alice.services.generation import GenerationRegistry
from alice.services.replies import ReplyService

log = logging.getLogger("alice.accounts")

STOP_WAIT_SECONDS = 5.0
# Rows per read of an export: each read is its own short query, no connection is held
# between them, and memory holds one batch, whatever the size of the account.
CONVERSATIONS_PER_READ = 100
MESSAGES_PER_READ = 500
CHUNK_BYTES = 64 * 1024


class AccountData:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        accounts: AccountService,
        generations: GenerationRegistry,
        replies: ReplyService,
    ) -> None:
        self._sessions = sessions
        self._accounts = accounts
        self._generations = generations
        self._replies = replies

    async def delete_account(self, user: CurrentUser, password: str) -> None:
        """With the password (403 INVALID_PASSWORD): stop the user's running replies (their
        provider requests closed), then delete the user, sessions, tokens, conversations and
        messages in one transaction. Every token of the user is refused from then on."""
        await self._accounts.check_password(user.id, password)
        running = await self._running_replies(user.id)
        for reply_id in running:
            await self._generations.request_stop(reply_id, None)
        # A reply of another process that does not end within the wait is deleted all the
        # same: its owner's last update then matches no row.
        await asyncio.gather(*(self._replies.wait_for_end(r, STOP_WAIT_SECONDS) for r in running))
        async with transaction(self._sessions) as session:
            conversations = select(Conversation.id).where(Conversation.user_id == user.id)
            await session.execute(delete(Message).where(Message.conversation_id.in_(conversations)))
            await session.execute(delete(Conversation).where(Conversation.user_id == user.id))
            for table in (RefreshToken, Session, PasswordReset):
                await session.execute(delete(table).where(table.user_id == user.id))
            # Anything else that refers to the user goes with it (ON DELETE CASCADE).
            await session.execute(delete(User).where(User.id == user.id))
        log.info("account deleted user_id=%s replies_stopped=%d", user.id, len(running))

    async def _running_replies(self, user_id: uuid.UUID) -> list[uuid.UUID]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(Message.id)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(Conversation.user_id == user_id, Message.status == MessageStatus.STREAMING)
            )
            return list(rows.scalars())

    async def export(self, user: CurrentUser) -> AsyncIterator[bytes]:
        """The account as one JSON document, in chunks: `{"user", "conversations": [... each
        with its "messages"], "exported_at"}`. `exported_at` comes last, so a download cut
        short is not valid JSON. No password hash, token or token hash is in it."""
        out = bytearray()
        out += b'{"user":' + UserResponse.model_validate(user).model_dump_json().encode()
        out += b',"conversations":['
        first_conversation = True
        async for conv in self._conversations(user.id):
            head = ConversationResponse.model_validate(conv).model_dump_json().encode()
            out += (b"" if first_conversation else b",") + head[:-1] + b',"messages":['
            first_conversation = False
            first_message = True
            async for batch in self._messages(conv.id):
                for m in batch:
                    out += (b"" if first_message else b",") + message_response(
                        m
                    ).model_dump_json().encode()
                    first_message = False
                if len(out) >= CHUNK_BYTES:
                    yield bytes(out)
                    out.clear()
            out += b"]}"
            if len(out) >= CHUNK_BYTES:
                yield bytes(out)
                out.clear()
        out += b'],"exported_at":' + json.dumps(utcnow().isoformat()).encode() + b"}"
        yield bytes(out)

    async def _conversations(self, user_id: uuid.UUID) -> AsyncIterator[Any]:
        """The user's conversations, oldest first, in keyset pages."""
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            stmt = select(Conversation).where(Conversation.user_id == user_id)
            if after is not None:
                stmt = stmt.where(
                    or_(
                        Conversation.created_at > after[0],
                        and_(Conversation.created_at == after[0], Conversation.id > after[1]),
                    )
                )
            stmt = stmt.order_by(Conversation.created_at, Conversation.id).limit(
                CONVERSATIONS_PER_READ
            )
            async with self._sessions() as session:
                page = list((await session.execute(stmt)).scalars())
            for conv in page:
                yield conv
            if len(page) < CONVERSATIONS_PER_READ:
                return
            after = (page[-1].created_at, page[-1].id)

    async def _messages(self, conversation_id: uuid.UUID) -> AsyncIterator[list[Any]]:
        """A conversation's messages, oldest first, in keyset batches (plain rows, each with its
        `sibling_count`, as `message_response` reads it)."""
        table = Message.__table__
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            stmt = select(table, SIBLING_COUNT.label("sibling_count")).where(
                table.c.conversation_id == conversation_id
            )
            if after is not None:
                stmt = stmt.where(
                    or_(
                        table.c.created_at > after[0],
                        and_(table.c.created_at == after[0], table.c.id > after[1]),
                    )
                )
            stmt = stmt.order_by(table.c.created_at, table.c.id).limit(MESSAGES_PER_READ)
            async with self._sessions() as session:
                batch = list((await session.execute(stmt)).all())
            if batch:
                yield batch
            if len(batch) < MESSAGES_PER_READ:
                return
            after = (batch[-1].created_at, batch[-1].id)
