from alice.models.base import Base
from alice.models.conversation import Conversation
from alice.models.idempotency import IdempotencyKey
from alice.models.message import Message, MessageRole, MessageStatus
from alice.models.refresh_token import RefreshToken
from alice.models.search import SearchDoc
from alice.models.session import PasswordReset, Session
from alice.models.usage import UsageDay
from alice.models.user import User

__all__ = [
    "Base",
    "Conversation",
    "IdempotencyKey",
    "Message",
    "MessageRole",
    "MessageStatus",
    "PasswordReset",
    "RefreshToken",
    "Session",
    "SearchDoc",
    "UsageDay",
    "User",
]
