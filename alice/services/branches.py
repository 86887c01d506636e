"""A conversation as a tree with one active branch (SPEC section 14): the storage rules.

Each message keeps its `parent_id`, its `depth` (0 for a first message) and its
`sibling_index` (its place among its parent's children, by creation). The active branch is
marked on the messages themselves: `active_depth` is `depth` on the branch and null off it,
under a unique index (conversation_id, active_depth). So:

- a page of the active branch is one range of that index (`active_depth > cursor`), costing
  the same at the millionth message as at the first, whatever the side branches hold;
- the AI's context, the new message's ancestors, is the range just above its depth;
- the active leaf is the deepest marked message (one step down the index from its end).

The marks change only in transactions that also hold the conversation (its row locked on
PostgreSQL, the database's write lock on SQLite), so two changes never interleave:

- appending to the leaf marks the new message (depth leaf + 1): nothing else moves;
- edit and regenerate first make the branch end at the parent of the message they replace
  (`end_branch_at`), then add the new message at the replaced one's depth, marked;
- switching to a message makes the branch end at it, then marks the newest child at each
  level below it (`extend_to_newest`);
- a reply deleted for having no text takes its mark with it; if its parent has other
  children (a failed regenerate), the branch goes on through the newest of them.

`end_branch_at(m)` walks up from `m` only while the messages are off the branch, clears the
marks below the first one that is on it and marks the walked ones: it costs the part of the
branch that changes, never the whole conversation. Each step keeps the invariant the index
enforces: the marked messages are exactly one root-to-leaf path, one per depth.

Functions here take a plain `Connection` inside the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, literal, select, update
from sqlalchemy.orm import aliased

from alice.core.database import constant, execute
from alice.models import Message, MessageStatus

_UPDATE_CHUNK = 500

_LEAF = constant(
    select(Message.id, Message.depth)
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.active_depth >= 0,
    )
    .order_by(Message.active_depth.desc())
    .limit(1)
)
_CHILDREN = constant(select(func.count()).where(Message.parent_id == bindparam("parent_id")))
_ROOTS = constant(
    select(func.count()).where(
        Message.conversation_id == bindparam("conversation_id"), Message.parent_id.is_(None)
    )
)
_NODE = constant(
    select(
        Message.id,
        Message.conversation_id,
        Message.role,
        Message.parent_id,
        Message.depth,
        Message.active_depth,
    ).where(Message.id == bindparam("message_id"))
)
# The context of a reply: the nearest ancestors with text, nearest first.
_ANCESTORS = constant(
    select(Message.role, Message.content, Message.status)
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.active_depth >= 0,
        Message.active_depth < bindparam("depth"),
        Message.status != MessageStatus.STREAMING,
        func.length(Message.content) > 0,
    )
    .order_by(Message.active_depth.desc())
    .limit(bindparam("limit"))
)
_CLEAR_BELOW = (
    update(Message)
    .where(
        Message.conversation_id == bindparam("in_conversation"),
        Message.active_depth > bindparam("below_depth"),
    )
    .values(active_depth=None)
    .execution_options(synchronize_session=False)
)


def leaf(conn: Connection, conversation_id: uuid.UUID) -> Any:
    """The active branch's last message (id, depth), or None for an empty conversation."""
    return execute(conn, _LEAF, {"conversation_id": conversation_id}).first()


def node(conn: Connection, conversation_id: uuid.UUID, message_id: uuid.UUID) -> Any:
    """The message (id, conversation_id, role, parent_id, depth, active_depth) when it is
    this conversation's, else None."""
    row = execute(conn, _NODE, {"message_id": message_id}).first()
    if row is None or row.conversation_id != conversation_id:
        return None
    return row


def next_sibling_index(
    conn: Connection, conversation_id: uuid.UUID, parent_id: uuid.UUID | None
) -> int:
    """The `sibling_index` of a new child of `parent_id` (null: a new first message)."""
    if parent_id is None:
        return int(execute(conn, _ROOTS, {"conversation_id": conversation_id}).scalar() or 0)
    return int(execute(conn, _CHILDREN, {"parent_id": parent_id}).scalar() or 0)


def ancestors(
    conn: Connection, conversation_id: uuid.UUID, depth: int, limit: int
) -> list[tuple[str, str, str]]:
    """The context of a message at `depth` on the active branch: the at most `limit` nearest
    ancestors with text, as (role, content, status), oldest first."""
    rows = execute(
        conn, _ANCESTORS, {"conversation_id": conversation_id, "depth": depth, "limit": limit}
    ).all()
    return [(r.role, r.content, r.status) for r in reversed(rows)]


def end_branch_at(
    conn: Connection, conversation_id: uuid.UUID, message_id: uuid.UUID | None
) -> None:
    """Make the active branch the path from the root to `message_id` (None: an empty
    branch, before a new first message)."""
    if message_id is None:
        conn.execute(_CLEAR_BELOW, {"in_conversation": conversation_id, "below_depth": -1})
        return
    # Up from the message while off the branch; the walk ends on the first marked ancestor.
    up = (
        select(Message.id, Message.parent_id, Message.depth, Message.active_depth)
        .where(Message.id == message_id)
        .cte("up", recursive=True)
    )
    parent = aliased(Message)
    up = up.union_all(
        select(parent.id, parent.parent_id, parent.depth, parent.active_depth).where(
            parent.id == up.c.parent_id, up.c.active_depth.is_(None)
        )
    )
    walked = conn.execute(select(up.c.id, up.c.depth, up.c.active_depth)).all()
    off = [r for r in walked if r.active_depth is None]
    keep = min(r.depth for r in off) - 1 if off else walked[0].depth
    conn.execute(_CLEAR_BELOW, {"in_conversation": conversation_id, "below_depth": keep})
    _mark(conn, [r.id for r in off])


def extend_to_newest(conn: Connection, message_id: uuid.UUID) -> None:
    """Below `message_id` (the active leaf), mark the newest child at each level."""
    child, newer = aliased(Message), aliased(Message)
    down = select(literal(message_id, Message.id.type).label("id")).cte("down", recursive=True)
    down = down.union_all(
        select(child.id)
        .join(down, child.parent_id == down.c.id)
        .where(
            ~exists().where(
                newer.parent_id == child.parent_id,
                newer.sibling_index > child.sibling_index,
            )
        )
    )
    conn.execute(
        update(Message)
        .where(Message.id.in_(select(down.c.id)), Message.id != message_id)
        .values(active_depth=Message.depth)
        .execution_options(synchronize_session=False)
    )


def after_empty_reply_deleted(
    conn: Connection, parent_id: uuid.UUID | None, was_active: bool
) -> None:
    """A reply that failed before any text was deleted: when it was on the active branch
    and its parent has other children (the reply was a regenerate), the branch goes on
    through the newest of them, as a switch to the parent would make it."""
    if was_active and parent_id is not None:
        extend_to_newest(conn, parent_id)


def _mark(conn: Connection, ids: Sequence[uuid.UUID]) -> None:
    for i in range(0, len(ids), _UPDATE_CHUNK):
        conn.execute(
            update(Message)
            .where(Message.id.in_(ids[i : i + _UPDATE_CHUNK]))
            .values(active_depth=Message.depth)
            .execution_options(synchronize_session=False)
        )
