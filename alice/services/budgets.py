"""Budgets: what is checked before a reply starts, so that one user cannot spend it all
(SPEC 15; OWASP API4, unrestricted resource consumption: each reply costs money).

- ALICE_USER_DAILY_TOKENS: the tokens of the user's UTC day, from the database's ledger
  (UsageService): 429 QUOTA_EXCEEDED, Retry-After the seconds to midnight UTC.
- ALICE_USER_MAX_RUNNING_REPLIES: a slot per running reply (`alice.services.slots`, the module
  the stream cap uses: in process, or in Redis across processes when configured), taken here
  and given back when the reply ends however it ends: 429 TOO_MANY_GENERATIONS, Retry-After 1.

Both are off unless set, and neither depends on ALICE_RATE_LIMIT_ENABLED.
"""

from __future__ import annotations

import logging
import uuid

from alice.core.errors import TooManyGenerationsError
from alice.services.slots import UNCOUNTED, Slot, Slots, SlotsUnavailableError
from alice.services.usage import UsageService

log = logging.getLogger("alice.budgets")

SLOT_KIND = "replies"


class Budgets:
    def __init__(self, usage: UsageService, slots: Slots, max_running: int | None) -> None:
        self._usage = usage
        self._slots = slots
        self._max_running = max_running

    async def admit(self, user_id: uuid.UUID) -> Slot:
        """Admit one more reply of the user, or refuse it (429) before anything is stored.
        The caller holds the returned slot while the reply runs and releases it at its end
        (or at once, if the reply does not start after all)."""
        await self._usage.check_budget(user_id)
        if self._max_running is None:
            return UNCOUNTED
        try:
            slot = await self._slots.acquire(SLOT_KIND, str(user_id), self._max_running)
        except SlotsUnavailableError:
            # As the request limits do when Redis is down: serve, and say so in the log.
            log.warning("running replies not counted: the slot store cannot be reached")
            return UNCOUNTED
        if slot is None:
            raise TooManyGenerationsError(headers={"Retry-After": "1"})
        return slot
