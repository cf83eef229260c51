"""Exceptions that carry the exit code the command line maps them to."""

from __future__ import annotations


class SharedrootError(Exception):
    """Base class; `exit_code` is what the command line returns."""

    exit_code = 1


class InputError(SharedrootError):
    """Bad input: a malformed file, key or argument (exit code 2)."""

    exit_code = 2


class RefusedError(SharedrootError):
    """A guard refused the operation before anything was written (exit code 1)."""


class OperationError(SharedrootError):
    """The operation started and failed; the message says what is left (exit code 1)."""


class StoreError(SharedrootError):
    """The store's files are damaged or not what sharedroot wrote (exit code 1)."""
