"""Passwords people actually pick (SPEC section 13): the 10,000 most common, and the
e-mail's local part, are refused at registration, change and reset.

The list: the first 10,000 entries of the ranked `passwords` frequency list that the `zxcvbn`
package ships (PyPI `zxcvbn` 4.5.0, github.com/dwolfhub/zxcvbn-python, `zxcvbn/
frequency_lists.py`, MIT licence; the list itself comes from Dropbox's zxcvbn, built from
leaked password corpora). zxcvbn keeps a word only in the list where it ranks best, so a few
thousand purely alphabetic passwords of the raw top 10,000 (michael, jennifer...) sit in its
name lists instead; those can never pass ALICE's own rule (a digit and an upper-case letter),
while every entry with a digit stays in `passwords` at a rank no worse than its raw one. So the
10,000 below cover every raw-top-10,000 password that the rules would otherwise let through.
Compared case-insensitively: "Password1" is refused as "password1".
"""

from __future__ import annotations

from functools import cache

from alice.core.errors import ValidationFailedError

COMMON_COUNT = 10_000
COMMON_SOURCE = "zxcvbn 4.5.0 FREQUENCY_LISTS['passwords'][:10000] (MIT)"
COMMON_MESSAGE = "is one of the 10,000 most common passwords"
LOCAL_PART_MESSAGE = "must not be the e-mail address's local part"


@cache
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords, lower-cased (loaded once, ~0.1 s)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(w.lower() for w in FREQUENCY_LISTS["passwords"][:COMMON_COUNT])


def is_common(password: str) -> bool:
    return password.lower() in common_passwords()


def is_local_part(password: str, email: str) -> bool:
    return password.lower() == email.rsplit("@", 1)[0].lower()


def check_not_local_part(password: str, email: str, field: str) -> None:
    """422 on `field` when the password is the e-mail's local part (case-insensitively)."""
    if is_local_part(password, email):
        raise ValidationFailedError(field, LOCAL_PART_MESSAGE)
