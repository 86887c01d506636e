"""/api/v1/chat: the message stream, conversations, messages, re-attach and stop."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from alice.api.deps import (
    Sender,
    ServicesDep,
    authenticated,
    authenticated_stream,
    message_sender,
)
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.api.responses import ModelResponse
from alice.api.sse import FeedResponse
from alice.core.errors import ErrorCode
from alice.models import MessageStatus
from alice.schemas.chat import (
    BranchSwitch,
    ConversationPage,
    ConversationResponse,
    ConversationUpdate,
    MessageCreate,
    MessagePage,
    MessageResponse,
    StopRequest,
)
from alice.services.auth import CurrentUser
from alice.services.chat import KEY_PATTERN, IdempotencyClaim, message_response
from alice.services.replies import ReplyFeed

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], generate_unique_id_function=operation_id)

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
_IDEMPOTENCY_KEY = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=KEY_PATTERN,
        description="1 to 255 visible ASCII characters, chosen by the client once per message "
        "it means to send. For 24 hours the same key with the same body sends nothing: it is a "
        "re-attach of that message's reply (after `Last-Event-ID` if given, else from its "
        "start; 204 when nothing follows). The same key with another body is a 422.",
    ),
]
_GET_LAST_EVENT_ID = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="`<message_id>:<seq>` of the last event the client has; wins over `after`.",
    ),
]


def _answer(feed: ReplyFeed | None) -> Response:
    if feed is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return FeedResponse(feed)


@router.post(
    "/message",
    response_class=Response,
    responses={
        **_NOTHING_FOLLOWS,
        **responses(
            ErrorCode.CONVERSATION_NOT_FOUND,
            ErrorCode.MESSAGE_NOT_FOUND,
            ErrorCode.GENERATION_IN_PROGRESS,
            ErrorCode.STREAM_UNAVAILABLE,
            ErrorCode.QUOTA_EXCEEDED,
            ErrorCode.TOO_MANY_GENERATIONS,
            stream=True,
        ),
    },
)
async def send_message(
    body: MessageCreate,
    sender: Annotated[Sender, message_sender("message", "10/minute", "stream", "60/minute")],
    services: ServicesDep,
    last_event_id: _POST_LAST_EVENT_ID = None,
    idempotency_key: _IDEMPOTENCY_KEY = None,
) -> Response:
    """Send a message and stream the reply. With `Last-Event-ID` naming one of the caller's
    replies, or an `Idempotency-Key` the caller sent this body with in the last 24 hours, it
    is a re-attach instead: nothing new is sent or stored."""
    claim = None
    if idempotency_key:
        claim = IdempotencyClaim.of(idempotency_key, body.model_dump_json())
    feed = await services.replies.send(
        sender.user.id,
        body.content,
        body.conversation_id,
        last_event_id,
        model=body.model,
        prior=sender.prior,
        idempotency=claim,
        edit_of=body.edit_of,
    )
    return _answer(feed)


@router.post(
    "/conversations/{conversation_id}/messages/{message_id}/regenerate",
    response_class=Response,
    responses=responses(
        ErrorCode.CONVERSATION_NOT_FOUND,
        ErrorCode.MESSAGE_NOT_FOUND,
        ErrorCode.GENERATION_IN_PROGRESS,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.TOO_MANY_GENERATIONS,
        stream=True,
    ),
)
async def regenerate(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    # The message limit: a regenerate is a message to the AI as any other.
    user: Annotated[CurrentUser, authenticated_stream("message", "10/minute")],
    services: ServicesDep,
) -> Response:
    """Generate a new reply beside the assistant message `message_id`, from the same context
    (its ancestors), and stream it; the older reply stays as its sibling."""
    return _answer(await services.replies.regenerate(user.id, conversation_id, message_id))


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
    """The conversation's active branch, oldest first."""
    items, next_cursor = await services.chat.list_messages(user.id, conversation_id, limit, cursor)
    return ModelResponse(
        MessagePage(items=[message_response(m) for m in items], next_cursor=next_cursor)
    )


@router.put(
    "/conversations/{conversation_id}/branch",
    response_model=MessagePage,
    responses=responses(
        ErrorCode.CONVERSATION_NOT_FOUND,
        ErrorCode.MESSAGE_NOT_FOUND,
        ErrorCode.GENERATION_IN_PROGRESS,
    ),
)
async def switch_branch(
    conversation_id: uuid.UUID,
    body: BranchSwitch,
    user: Annotated[CurrentUser, authenticated("branch", "60/minute")],
    services: ServicesDep,
) -> Response:
    """Make the branch through `message_id` active (below it, the newest child at each
    level); the answer is that branch's first page."""
    items, next_cursor = await services.chat.switch_branch(
        user.id, conversation_id, body.message_id
    )
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
    return _answer(await services.replies.reattach(user.id, conversation_id, last_event_id, after))


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
    ended = await services.replies.stop(user.id, conversation_id, body.last_index if body else None)
    if ended is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    if ended.status == MessageStatus.STREAMING:
        return ModelResponse(message_response(ended), status_code=status.HTTP_202_ACCEPTED)
    return ModelResponse(message_response(ended))


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
    await services.replies.delete_conversation(user.id, conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
