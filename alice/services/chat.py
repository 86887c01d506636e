"""ChatService: conversations and messages, their ownership and keyset pages."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alice.core.database import Direct, constant, execute, transaction
from alice.core.errors import (
    ConversationNotFoundError,
    GenerationInProgressError,
    MessageNotFoundError,
    ValidationFailedError,
)
from alice.core.security import utcnow
from alice.models import Conversation, IdempotencyKey, Message, MessageRole, MessageStatus
from alice.models.message import SIBLING_COUNT
from alice.schemas.chat import MessageResponse
from alice.services import branches
from alice.services.ai.base import ChatTurn
from alice.services.ai.context import build_context
from alice.services.pagination import (
    decode_cursor,
    decode_position_cursor,
    encode_cursor,
    encode_position_cursor,
)

TITLE_MAX = 80
BRANCH_PAGE = 50  # the page a branch switch answers with (the messages' default limit)
_CONVERSATION_COLUMNS = (
    Conversation.id,
    Conversation.title,
    Conversation.created_at,
    Conversation.updated_at,
    Conversation.model,
)
_SPACES = re.compile(r"\s+")

# The list reads, built once: building a statement cost more than running it (and a new
# statement object makes SQLAlchemy match its result columns again). Plain rows, not ORM
# objects: the identity map and the session's bookkeeping cost more than the query.
# The keyset predicates are row-value comparisons, so the indexes (user_id, updated_at, id)
# and (conversation_id, created_at, id) are searched straight to the cursor: the expanded
# OR form made SQLite scan from the start.
_CONVERSATIONS = select(*_CONVERSATION_COLUMNS).where(Conversation.user_id == bindparam("user_id"))
_CONVERSATIONS_ORDER = (Conversation.updated_at.desc(), Conversation.id.desc())
_CONVERSATIONS_FIRST = constant(
    _CONVERSATIONS.order_by(*_CONVERSATIONS_ORDER).limit(bindparam("limit"))
)
_CONVERSATIONS_AFTER = constant(
    _CONVERSATIONS.where(
        tuple_(Conversation.updated_at, Conversation.id)
        < tuple_(
            bindparam("at", type_=Conversation.updated_at.type),
            bindparam("after_id", type_=Conversation.id.type),
        )
    )
    .order_by(*_CONVERSATIONS_ORDER)
    .limit(bindparam("limit"))
)
_CONVERSATION_OWNER = constant(
    select(Conversation.user_id).where(Conversation.id == bindparam("conversation_id"))
)
_CONVERSATION_OWNER_MODEL = select(Conversation.user_id, Conversation.model).where(
    Conversation.id == bindparam("conversation_id")
)
# Taken first by every transaction that changes a conversation's tree: on PostgreSQL it locks
# the row, so such transactions on one conversation run one after the other (SQLite's write
# lock already does that).
_CONVERSATION_LOCKED = constant(_CONVERSATION_OWNER_MODEL.with_for_update())
# The writes of `begin_reply`, built once (a statement built per call costs its cache key),
# run on SQLite's driver where they run inline (`database.constant`).
_NEW_KEY = constant(insert(IdempotencyKey))
_NEW_CONVERSATION = constant(insert(Conversation))
_NEW_MESSAGES = constant(insert(Message))
_CONVERSATION_TOUCHED = constant(
    update(Conversation)
    .where(Conversation.id == bindparam("touched_id"))
    .values(
        updated_at=bindparam("touched_at", type_=Conversation.__table__.c.updated_at.type),
        model=bindparam("touched_model", type_=Conversation.__table__.c.model.type),
    )
)
_STREAMING_REPLY = constant(
    select(Message.id).where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.status == MessageStatus.STREAMING,
    )
)
# A page of the active branch: one range of the index (conversation_id, active_depth).
_MESSAGES_PAGE = constant(
    select(*Message.__table__.columns, SIBLING_COUNT.label("sibling_count"))
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.active_depth > bindparam("after_depth"),
    )
    .order_by(Message.active_depth)
    .limit(bindparam("limit"))
)


def make_title(content: str) -> str:
    """The first user message, white space folded, cut at 80 characters."""
    return _SPACES.sub(" ", content).strip()[:TITLE_MAX].rstrip()


def message_response(m: Message) -> MessageResponse:
    """The MessageResponse of a message (an ORM object or a page row: both carry
    `sibling_count`)."""
    streaming = m.status == MessageStatus.STREAMING
    return MessageResponse(
        id=m.id,
        conversation_id=m.conversation_id,
        role=m.role,  # type: ignore[arg-type]
        content=m.content,
        status=m.status,  # type: ignore[arg-type]
        token_count=m.token_count,
        event_id=f"{m.id}:{m.event_seq}" if streaming and m.event_seq else None,
        created_at=m.created_at,
        model=m.model,
        parent_id=m.parent_id,
        sibling_index=m.sibling_index,
        sibling_count=m.sibling_count,
    )


KEY_LIFE = timedelta(hours=24)  # SPEC 6: an Idempotency-Key holds for 24 hours


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """The `Idempotency-Key` of a send and the hash of its body."""

    key: str
    request_hash: str

    @classmethod
    def of(cls, key: str, body_json: str) -> IdempotencyClaim:
        """The claim of a request: its key and the SHA-256 of its body as parsed (so white
        space and the order of JSON keys do not make another body)."""
        return cls(key, hashlib.sha256(body_json.encode()).hexdigest())


# SPEC 6: 1 to 255 visible ASCII characters.
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
KEY_SYNTAX = re.compile(KEY_PATTERN)


class KeyTakenError(Exception):
    """The key was stored by another send first (`row`): this one is a re-attach to it."""

    def __init__(self, row: IdempotencyKey) -> None:
        super().__init__(row.key)
        self.row = row


@dataclass(frozen=True, slots=True)
class ReplyStart:
    """What the POST committed: the user's message (none for a regenerate) and the
    placeholder of the reply."""

    conversation_id: uuid.UUID
    is_new: bool
    user_message_id: uuid.UUID | None
    message_id: uuid.UUID
    context: list[ChatTurn]
    model: str


class ChatService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        direct: Direct,
        context_messages: int,
        models: list[str] | None = None,
    ) -> None:
        self._sessions = sessions
        self._direct = direct
        self._context_messages = context_messages
        # The models a user may choose (ALICE_AI_MODELS); the first is the default.
        self._models = models or [""]

    def check_model(self, model: str | None) -> None:
        """A 422 on `body.model` unless it is None or one of ALICE_AI_MODELS."""
        if model is not None and model not in self._models:
            raise ValidationFailedError("body.model", "must be one of GET /chat/models")

    async def get_conversation(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID
    ) -> Conversation:
        """The user's conversation; someone else's is a 404 exactly as a missing one."""
        async with self._sessions() as session:
            conv = await self._owned(session, user_id, conversation_id)
        return conv

    async def list_conversations(
        self, user_id: uuid.UUID, limit: int, cursor: str | None
    ) -> tuple[list[Any], str | None]:
        """A page of the user's conversations, newest `updated_at` first (keyset)."""
        params: dict[str, Any] = {"user_id": user_id, "limit": limit + 1}
        query = _CONVERSATIONS_FIRST
        if cursor:
            params["at"], params["after_id"] = decode_cursor("c", cursor)
            query = _CONVERSATIONS_AFTER
        rows = list(await self._direct.all(query, params))
        return _page(rows, limit, lambda c: encode_cursor("c", c.updated_at, c.id))

    async def list_messages(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, limit: int, cursor: str | None
    ) -> tuple[list[Any], str | None]:
        """A page of the conversation's active branch, oldest first (keyset on the depth)."""
        owner = await self._direct.first(_CONVERSATION_OWNER, {"conversation_id": conversation_id})
        if owner is None or owner.user_id != user_id:
            raise ConversationNotFoundError()
        return await self._branch_page(conversation_id, limit, cursor)

    async def _branch_page(
        self, conversation_id: uuid.UUID, limit: int, cursor: str | None
    ) -> tuple[list[Any], str | None]:
        after = decode_position_cursor("b", cursor)[0] if cursor else -1
        params = {"conversation_id": conversation_id, "after_depth": after, "limit": limit + 1}
        rows = list(await self._direct.all(_MESSAGES_PAGE, params))
        return _page(rows, limit, lambda m: encode_position_cursor("b", m.active_depth, m.id))

    async def switch_branch(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        limit: int = BRANCH_PAGE,
    ) -> tuple[list[Any], str | None]:
        """Make the branch through `message_id` active (below it, the newest child at each
        level) and return its first page."""

        def work(conn: Connection) -> None:
            self._lock_owned(conn, user_id, conversation_id)
            target = branches.node(conn, conversation_id, message_id)
            if target is None:
                raise MessageNotFoundError()
            if execute(conn, _STREAMING_REPLY, {"conversation_id": conversation_id}).first():
                raise GenerationInProgressError()
            branches.end_branch_at(conn, conversation_id, target.id)
            branches.extend_to_newest(conn, target.id)

        await self._direct.transaction(work)
        return await self._branch_page(conversation_id, limit, None)

    async def rename(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, title: str
    ) -> Conversation:
        async with transaction(self._sessions) as session:
            conv = await self._owned(session, user_id, conversation_id)
            conv.title = title
        return conv

    async def delete(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        """Delete the conversation and its messages (the caller stops a running reply first)."""
        async with transaction(self._sessions) as session:
            await self._owned(session, user_id, conversation_id)
            await session.execute(delete(Message).where(Message.conversation_id == conversation_id))
            await session.execute(delete(Conversation).where(Conversation.id == conversation_id))

    async def streaming_message(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID
    ) -> Message | None:
        """The conversation's running reply, if any (after the ownership check)."""
        async with self._sessions() as session:
            await self._owned(session, user_id, conversation_id)
            return (
                await session.execute(
                    select(Message).where(
                        Message.conversation_id == conversation_id,
                        Message.status == MessageStatus.STREAMING,
                    )
                )
            ).scalar()

    async def newest_reply(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> Message | None:
        async with self._sessions() as session:
            await self._owned(session, user_id, conversation_id)
            return (
                await session.execute(
                    select(Message)
                    .where(
                        Message.conversation_id == conversation_id,
                        Message.role == MessageRole.ASSISTANT,
                    )
                    .order_by(Message.created_at.desc(), Message.id.desc())
                    .limit(1)
                )
            ).scalar()

    async def get_message(self, message_id: uuid.UUID) -> Message | None:
        async with self._sessions() as session:
            return await session.get(Message, message_id)

    async def find_reply(self, user_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        """The assistant message `message_id` when it belongs to one of the user's conversations."""
        async with self._sessions() as session:
            return (
                await session.execute(
                    select(Message)
                    .join(Conversation, Conversation.id == Message.conversation_id)
                    .where(
                        Message.id == message_id,
                        Message.role == MessageRole.ASSISTANT,
                        Conversation.user_id == user_id,
                    )
                )
            ).scalar()

    async def begin_reply(
        self,
        user_id: uuid.UUID,
        content: str,
        conversation_id: uuid.UUID | None,
        model: str | None = None,
        idempotency: IdempotencyClaim | None = None,
        edit_of: uuid.UUID | None = None,
    ) -> ReplyStart:
        """Commit the user's message and the reply's `streaming` placeholder together.

        The message goes below the active leaf or, with `edit_of` (a user message of this
        conversation), beside that message: the active branch then ends at the new one.
        A conversation already generating a reply refuses (409); the unique partial index on
        `streaming` messages makes that hold for simultaneous requests too. The reply's model
        is `model` (which the conversation keeps from now on), else the conversation's, else
        the default. With an `idempotency` claim the key is stored in the same transaction,
        first: of two requests with one key, on any processes, one commits and the other
        raises `KeyTakenError` with the winner's row (PostgreSQL makes the second insert wait
        for the first's end)."""
        self.check_model(model)
        if edit_of is not None and conversation_id is None:
            raise ValidationFailedError(
                "body.conversation_id", "An edit names the conversation of the edited message."
            )
        default_model = self._models[0]
        now = utcnow()
        user_msg_id, reply_id = uuid.uuid4(), uuid.uuid4()
        is_new = conversation_id is None
        conv_id = conversation_id or uuid.uuid4()

        # Core statements on a plain connection, in one transaction that may run inline (see
        # Direct): this is on the way to the first token.
        def work(conn: Connection) -> tuple[list[tuple[str, str, str]], str]:
            history: list[tuple[str, str, str]] = []
            chosen = model or default_model
            if idempotency is not None:
                key = (IdempotencyKey.user_id == user_id) & (IdempotencyKey.key == idempotency.key)
                # A key older than its life is free again.
                conn.execute(
                    delete(IdempotencyKey).where(key, IdempotencyKey.created_at < now - KEY_LIFE)
                )
                execute(
                    conn,
                    _NEW_KEY,
                    {
                        "user_id": user_id,
                        "key": idempotency.key,
                        "request_hash": idempotency.request_hash,
                        "conversation_id": conv_id,
                        "message_id": reply_id,
                        "created_at": now,
                    },
                )
            parent_id: uuid.UUID | None = None
            depth = sibling_index = 0
            if is_new:
                execute(
                    conn,
                    _NEW_CONVERSATION,
                    {
                        "id": conv_id,
                        "user_id": user_id,
                        "title": make_title(content),
                        "created_at": now,
                        "updated_at": now,
                        "model": chosen,
                    },
                )
            else:
                conv = self._lock_owned(conn, user_id, conv_id)
                if model is None and conv.model in self._models:
                    chosen = conv.model
                edited = None
                if edit_of is not None:
                    edited = branches.node(conn, conv_id, edit_of)
                    if edited is None:
                        raise MessageNotFoundError()
                    if edited.role != MessageRole.USER:
                        raise ValidationFailedError(
                            "body.edit_of", "Only a user message can be edited."
                        )
                if execute(conn, _STREAMING_REPLY, {"conversation_id": conv_id}).first():
                    raise GenerationInProgressError()
                if edited is not None:
                    parent_id, depth = edited.parent_id, edited.depth
                    branches.end_branch_at(conn, conv_id, parent_id)
                else:
                    leaf = branches.leaf(conn, conv_id)
                    if leaf is not None:
                        parent_id, depth = leaf.id, leaf.depth + 1
                sibling_index = branches.next_sibling_index(conn, conv_id, parent_id)
                history = branches.ancestors(conn, conv_id, depth, self._context_messages)
                execute(
                    conn,
                    _CONVERSATION_TOUCHED,
                    {"touched_id": conv_id, "touched_at": now, "touched_model": chosen},
                )
            execute(
                conn,
                _NEW_MESSAGES,
                [
                    _row(
                        user_msg_id,
                        conv_id,
                        MessageRole.USER,
                        content,
                        now,
                        parent_id,
                        depth,
                        sibling_index,
                    ),
                    _placeholder(reply_id, conv_id, now, user_msg_id, depth + 1, 0, chosen),
                ],
            )
            return history, chosen

        try:
            history, chosen = await self._direct.transaction(work)
        except IntegrityError:
            if idempotency is not None:
                taken = await self.find_idempotency_key(user_id, idempotency.key)
                if taken is not None:
                    raise KeyTakenError(taken) from None
            raise GenerationInProgressError() from None
        context = build_context(
            [*history, ("user", content, MessageStatus.COMPLETE)], self._context_messages
        )
        return ReplyStart(conv_id, is_new, user_msg_id, reply_id, context, chosen)

    async def find_idempotency_key(self, user_id: uuid.UUID, key: str) -> IdempotencyKey | None:
        """The user's send with this `Idempotency-Key` within its life (24 hours), if any."""
        async with self._sessions() as session:
            return (
                await session.execute(
                    select(IdempotencyKey).where(
                        IdempotencyKey.user_id == user_id,
                        IdempotencyKey.key == key,
                        IdempotencyKey.created_at >= utcnow() - KEY_LIFE,
                    )
                )
            ).scalar()

    async def begin_regenerate(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> ReplyStart:
        """Commit a new `streaming` reply beside the assistant message `message_id`, from the
        same context (its ancestors); the active branch then ends at it."""
        now = utcnow()
        reply_id = uuid.uuid4()

        def work(conn: Connection) -> tuple[list[tuple[str, str, str]], str]:
            conv = self._lock_owned(conn, user_id, conversation_id)
            # The conversation's model, as for a message sent to it now.
            chosen = conv.model if conv.model in self._models else self._models[0]
            old = branches.node(conn, conversation_id, message_id)
            if old is None:
                raise MessageNotFoundError()
            if old.role != MessageRole.ASSISTANT:
                raise ValidationFailedError(
                    "path.message_id", "Only an assistant message can be regenerated."
                )
            if execute(conn, _STREAMING_REPLY, {"conversation_id": conversation_id}).first():
                raise GenerationInProgressError()
            branches.end_branch_at(conn, conversation_id, old.parent_id)
            sibling_index = branches.next_sibling_index(conn, conversation_id, old.parent_id)
            history = branches.ancestors(conn, conversation_id, old.depth, self._context_messages)
            conn.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(updated_at=now)
            )
            execute(
                conn,
                _NEW_MESSAGES,
                [
                    _placeholder(
                        reply_id,
                        conversation_id,
                        now,
                        old.parent_id,
                        old.depth,
                        sibling_index,
                        chosen,
                    )
                ],
            )
            return history, chosen

        try:
            history, chosen = await self._direct.transaction(work)
        except IntegrityError:
            raise GenerationInProgressError() from None
        context = build_context(history, self._context_messages)
        return ReplyStart(conversation_id, False, None, reply_id, context, chosen)

    @staticmethod
    def _lock_owned(conn: Connection, user_id: uuid.UUID, conversation_id: uuid.UUID) -> Any:
        """The conversation's (user_id, model), its row locked on PostgreSQL; a 404 for
        anyone else's."""
        conv = execute(conn, _CONVERSATION_LOCKED, {"conversation_id": conversation_id}).first()
        if conv is None or conv.user_id != user_id:
            raise ConversationNotFoundError()
        return conv

    @staticmethod
    async def _owned(
        session: AsyncSession, user_id: uuid.UUID, conversation_id: uuid.UUID
    ) -> Conversation:
        conv = await session.get(Conversation, conversation_id)
        if conv is None or conv.user_id != user_id:
            raise ConversationNotFoundError()
        return conv


def _row(
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    role: MessageRole,
    content: str,
    at: datetime,
    parent_id: uuid.UUID | None,
    depth: int,
    sibling_index: int,
    model: str | None = None,
) -> dict[str, Any]:
    """A new complete message, on the active branch."""
    return {
        "id": message_id,
        "conversation_id": conversation_id,
        "role": role,
        "content": content,
        "status": MessageStatus.COMPLETE,
        "token_count": 0,
        "event_seq": None,
        "heartbeat_at": None,
        "created_at": at,
        "parent_id": parent_id,
        "depth": depth,
        "sibling_index": sibling_index,
        "active_depth": depth,
        "model": model,
        "input_tokens": 0,
        "output_tokens": 0,
    }


def _placeholder(
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    at: datetime,
    parent_id: uuid.UUID | None,
    depth: int,
    sibling_index: int,
    model: str,
) -> dict[str, Any]:
    """A reply's `streaming` row, on the active branch, written by `model`."""
    row = _row(
        message_id,
        conversation_id,
        MessageRole.ASSISTANT,
        "",
        at,
        parent_id,
        depth,
        sibling_index,
        model,
    )
    # One microsecond later: the reply sorts after its question.
    row.update(
        status=MessageStatus.STREAMING,
        event_seq=1,
        heartbeat_at=at,
        created_at=at + timedelta(microseconds=1),
    )
    return row


def _page(rows: list, limit: int, cursor_of) -> tuple[list, str | None]:  # type: ignore[no-untyped-def]
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, cursor_of(rows[-1])
    return rows, None
