"""/api/v1/chat: the message stream, conversations, messages, re-attach and stop."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from alice.api.deps import ServicesDep, authenticated, authenticated_stream
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.api.responses import ModelResponse
from alice.api.sse import ReplyCursor, reply_stream, snapshot_stream
from alice.core.errors import (
    ErrorCode,
    StreamUnavailableError,
    ValidationFailedError,
)
from alice.models import MessageStatus
from alice.schemas.chat import (
    ConversationPage,
    ConversationResponse,
    ConversationUpdate,
    MessageCreate,
    MessagePage,
    MessageResponse,
    StopRequest,
)
from alice.services.auth import CurrentUser
from alice.services.chat import message_response
from alice.services.eventlog.base import LogUnavailableError

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], generate_unique_id_function=operation_id)

STOP_WAIT_SECONDS = 5.0

# Beyond these, a route's error codes follow from its dependencies and parameters
# (`alice.api.openapi`): the bearer-token user with its limit, a body, a path id.
_NOTHING_FOLLOWS: dict[int | str, dict[str, Any]] = {
    204: {"description": "Nothing follows the cursor, or there is no reply."}
}
_POST_LAST_EVENT_ID = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="`<message_id>:<seq>`, the last event the client has of one of its "
        "replies: the request is then a re-attach to that reply after that event (204 when "
        "nothing follows) and sends nothing. One that does not decode is a 422; one that names "
        "no reply of the caller's is ignored (the message is sent).",
    ),
]
_GET_LAST_EVENT_ID = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="`<message_id>:<seq>` of the last event the client has; wins over `after`.",
    ),
]


def parse_cursor(value: str, field: str) -> ReplyCursor:
    message_id, sep, seq = value.partition(":")
    try:
        if not sep or not seq.isdigit() or len(seq) > 9:
            raise ValueError
        return ReplyCursor(uuid.UUID(message_id), int(seq))
    except ValueError:
        raise ValidationFailedError(field, "The event id is not valid.") from None


@router.post(
    "/message",
    response_class=Response,
    responses={
        **_NOTHING_FOLLOWS,
        **responses(
            ErrorCode.CONVERSATION_NOT_FOUND,
            ErrorCode.GENERATION_IN_PROGRESS,
            ErrorCode.STREAM_UNAVAILABLE,
            stream=True,
        ),
    },
)
async def send_message(
    body: MessageCreate,
    user: Annotated[CurrentUser, authenticated_stream("message", "10/minute")],
    services: ServicesDep,
    last_event_id: _POST_LAST_EVENT_ID = None,
) -> Response:
    """Send a message and stream the reply. With `Last-Event-ID` naming one of the caller's
    replies it is a re-attach instead: nothing new is sent or stored."""
    if last_event_id:
        cursor = parse_cursor(last_event_id, "header.Last-Event-ID")
        reply = await services.chat.find_reply(user.id, cursor.message_id)
        if reply is not None:
            return await _reattach(
                services, reply.conversation_id, cursor, reply, "header.Last-Event-ID"
            )
    start = await services.chat.begin_reply(user.id, body.content, body.conversation_id)
    await services.generations.start(
        message_id=start.message_id,
        conversation_id=start.conversation_id,
        user_id=user.id,
        is_new=start.is_new,
        context=start.context,
    )
    on_close = None
    if services.settings.generation_on_disconnect == "stop":
        on_close = services.generations.client_left
    return reply_stream(services, start.message_id, after=0, on_client_left=on_close)


@router.get(
    "/conversations",
    response_model=ConversationPage,
)
async def list_conversations(
    user: Annotated[CurrentUser, authenticated("conversations", "60/minute")],
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """The user's conversations, most recently updated first."""
    items, next_cursor = await services.chat.list_conversations(user.id, limit, cursor)
    # One validation of the whole page (the rows' attributes read in pydantic-core).
    page = ConversationPage.model_validate({"items": items, "next_cursor": next_cursor})
    return ModelResponse(page)


@router.get(
    "/conversations/{conversation_id}/messages",
    response_model=MessagePage,
    responses=responses(ErrorCode.CONVERSATION_NOT_FOUND),
)
async def list_messages(
    conversation_id: uuid.UUID,
    user: Annotated[CurrentUser, authenticated("messages", "60/minute")],
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """A conversation's messages, oldest first."""
    items, next_cursor = await services.chat.list_messages(user.id, conversation_id, limit, cursor)
    return ModelResponse(
        MessagePage(items=[message_response(m) for m in items], next_cursor=next_cursor)
    )


@router.get(
    "/conversations/{conversation_id}/stream",
    response_class=Response,
    responses={
        **_NOTHING_FOLLOWS,
        **responses(ErrorCode.CONVERSATION_NOT_FOUND, ErrorCode.STREAM_UNAVAILABLE, stream=True),
    },
)
async def reattach(
    conversation_id: uuid.UUID,
    user: Annotated[CurrentUser, authenticated_stream("stream", "60/minute")],
    services: ServicesDep,
    last_event_id: _GET_LAST_EVENT_ID = None,
    after: Annotated[str | None, Query(max_length=64, description="`<message_id>:<seq>`")] = None,
) -> Response:
    """Re-attach to the conversation's newest reply, or to the one the cursor names: replay
    exactly the events after the cursor, then follow live to the terminal event."""
    field = "header.Last-Event-ID" if last_event_id else "query.after"
    if last_event_id:
        cursor = parse_cursor(last_event_id, field)
    elif after:
        cursor = parse_cursor(after, field)
    else:
        cursor = None
    if cursor is None:
        reply = await services.chat.newest_reply(user.id, conversation_id)
        if reply is None:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        cursor = ReplyCursor(reply.id, 0)
    else:
        await services.chat.get_conversation(user.id, conversation_id)
        reply = await services.chat.get_message(cursor.message_id)
        if reply is not None and reply.conversation_id != conversation_id:
            raise ValidationFailedError(field, "The event id is not this conversation's.")
    return await _reattach(services, conversation_id, cursor, reply, field)


async def _reattach(services, conversation_id, cursor: ReplyCursor, reply, field: str) -> Response:  # type: ignore[no-untyped-def]
    """Serve a re-attach once the reply is known to be the caller's (or known to be none)."""
    if reply is None:
        # The cursor names no stored reply: a reply deleted for having no text counts as none;
        # an id that is nowhere at all is a bad cursor.
        try:
            known = await services.event_log.state(cursor.message_id) is not None
        except LogUnavailableError:
            known = False
        if known:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        raise ValidationFailedError(field, "The event id names no reply.")
    if reply.role != "assistant":
        raise ValidationFailedError(field, "The event id names no reply.")
    try:
        state = await services.event_log.state(cursor.message_id)
    except LogUnavailableError:
        state = None
    if state is None:
        if reply.status == MessageStatus.STREAMING:
            raise StreamUnavailableError()
        if reply.event_seq is not None and cursor.seq >= reply.event_seq:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        return snapshot_stream(services, reply)
    if state.finished and cursor.seq >= state.last_seq:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return reply_stream(
        services,
        cursor.message_id,
        after=cursor.seq,
        max_seconds=services.settings.sse_max_connection_seconds,
        reattach=True,
    )


@router.post(
    "/conversations/{conversation_id}/stop",
    response_model=MessageResponse,
    responses={
        202: {"description": "The stop was asked for; the reply is still running after 5 s."},
        204: {"description": "Nothing is running in this conversation."},
        **responses(ErrorCode.CONVERSATION_NOT_FOUND),
    },
)
async def stop(
    conversation_id: uuid.UUID,
    user: Annotated[CurrentUser, authenticated("stop", "60/minute")],
    services: ServicesDep,
    body: StopRequest | None = None,
) -> Response:
    """Stop the conversation's running reply, from any process; the text up to `last_index`
    (the last token the client showed; default all) is kept as `stopped`."""
    reply = await services.chat.streaming_message(user.id, conversation_id)
    if reply is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    last_index = body.last_index if body else None
    await services.generations.request_stop(reply.id, last_index)
    ended = await _wait_for_end(services, reply.id, STOP_WAIT_SECONDS)
    if ended is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    if ended.status == MessageStatus.STREAMING:
        return ModelResponse(message_response(ended), status_code=status.HTTP_202_ACCEPTED)
    return ModelResponse(message_response(ended))


async def _wait_for_end(services, message_id: uuid.UUID, wait_seconds: float):  # type: ignore[no-untyped-def]
    if services.generations.is_local(message_id):
        await services.generations.wait(message_id, wait_seconds)
        return await services.chat.get_message(message_id)
    loop = asyncio.get_running_loop()
    until = loop.time() + wait_seconds
    while True:
        message = await services.chat.get_message(message_id)
        if message is None or message.status != MessageStatus.STREAMING or loop.time() >= until:
            return message
        await asyncio.sleep(0.1)


@router.patch(
    "/conversations/{conversation_id}",
    response_model=ConversationResponse,
    responses=responses(ErrorCode.CONVERSATION_NOT_FOUND),
)
async def rename(
    conversation_id: uuid.UUID,
    body: ConversationUpdate,
    user: Annotated[CurrentUser, authenticated("rename", "60/minute")],
    services: ServicesDep,
) -> ConversationResponse:
    """Rename a conversation."""
    conv = await services.chat.rename(user.id, conversation_id, body.title)
    return ConversationResponse.model_validate(conv)


@router.delete(
    "/conversations/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(ErrorCode.CONVERSATION_NOT_FOUND),
)
async def delete_conversation(
    conversation_id: uuid.UUID,
    user: Annotated[CurrentUser, authenticated("delete", "60/minute")],
    services: ServicesDep,
) -> Response:
    """Delete a conversation and its messages; a running reply is stopped first."""
    reply = await services.chat.streaming_message(user.id, conversation_id)
    if reply is not None:
        await services.generations.request_stop(reply.id, None)
        await _wait_for_end(services, reply.id, STOP_WAIT_SECONDS)
    await services.chat.delete(user.id, conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
