"""Who may do what through `sharedroot serve`: API roles, token names, job states."""

from __future__ import annotations

import re
from enum import StrEnum

from sharedroot.errors import InputError

TOKEN_NAME_RULE = r"[a-z0-9][a-z0-9._-]{0,31}"
# `sr_` and 43 characters of URL-safe base64: 256 random bits.
TOKEN_RULE = r"sr_[A-Za-z0-9_-]{43}"


class ApiRole(StrEnum):
    """A token's rights: a viewer reads, an operator also acts, an admin also manages tokens."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def may(self, needed: ApiRole) -> bool:
        order = list(ApiRole)
        return order.index(self) >= order.index(needed)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def token_name(text: str) -> str:
    if not re.fullmatch(TOKEN_NAME_RULE, text):
        raise InputError(
            f"token name {text!r}: 1-32 of a-z 0-9 . _ - (starting with a letter or digit)"
        )
    return text
