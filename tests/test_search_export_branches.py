"""SPEC 14 with SPEC 15: search covers every branch; export gives the active branch as
Markdown and the whole tree as JSON."""

from __future__ import annotations

import re
import uuid

import pytest

from alice.schemas.chat import MessageCreate
from tests.chatkit import CHAT, messages, read_stream, send

pytestmark = pytest.mark.skipif(
    "edit_of" not in MessageCreate.model_fields, reason="branches (SPEC 14) are not served yet"
)


async def _edit(client, user, conversation_id, edit_of, content):
    stream = await read_stream(
        client,
        "POST",
        f"{CHAT}/message",
        headers=user.headers,
        json_body={
            "content": content,
            "conversation_id": str(conversation_id),
            "edit_of": str(edit_of),
        },
    )
    assert stream.status == 200 and stream.terminal.event == "done", stream.body
    return stream


async def _tree(client, user):
    """A conversation whose first question was edited: two branches of two messages each."""
    old_tag, new_tag = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    first = await send(client, user.access_token, f"original question {old_tag}")
    conv = first.conversation_id
    (question, _reply) = await messages(client, user.access_token, conv)
    await _edit(client, user, conv, question["id"], f"edited question {new_tag}")
    return conv, old_tag, new_tag


async def test_search_finds_messages_on_every_branch(client, user):
    conv, old_tag, new_tag = await _tree(client, user)
    active = {m["id"] for m in await messages(client, user.access_token, conv)}
    for tag in (old_tag, new_tag):
        resp = await client.get(f"{CHAT}/search", params={"q": tag}, headers=user.headers)
        hits = [h for h in resp.json()["items"] if h["message_id"]]
        assert len(hits) == 2, hits  # the question and the mock's echo of it
        on_active = {h["message_id"] in active for h in hits}
        assert on_active == {tag == new_tag}


async def test_export_markdown_is_the_active_branch_json_the_whole_tree(client, user):
    conv, old_tag, new_tag = await _tree(client, user)
    url = f"{CHAT}/conversations/{conv}/export"
    md = (await client.get(url, params={"format": "markdown"}, headers=user.headers)).text
    title, _, rest = md.partition("\n")
    assert title == f"# original question {old_tag}"  # the title stays the first message's
    assert new_tag in rest and old_tag not in rest
    assert re.findall(r"^## (\w+)$", md, flags=re.M) == ["user", "assistant"]
    body = (await client.get(url, params={"format": "json"}, headers=user.headers)).json()
    assert len(body["messages"]) == 4
    by_id = {m["id"]: m for m in body["messages"]}
    roots = [m for m in body["messages"] if m["parent_id"] is None]
    assert len(roots) == 2  # the original first question and its edit
    for m in body["messages"]:
        if m["role"] == "assistant":
            assert by_id[m["parent_id"]]["role"] == "user"
