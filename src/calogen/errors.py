"""Errors that the command line reports as one clear line (no traceback).

``UsageError`` means the user asked for something invalid (exit code 2);
``CalogenError`` means valid input could not be processed (exit code 1).
"""

from __future__ import annotations


class CalogenError(Exception):
    """A runtime failure with a message meant for the user (exit code 1)."""

    exit_code = 1


class UsageError(CalogenError):
    """Invalid user input: bad file, bad number, bad option (exit code 2)."""

    exit_code = 2
