"""Exceptions raised for bad user input (images, prompts, conversations)."""


class InputError(ValueError):
    """The caller passed input that cannot be processed: an unreadable or corrupt image, a prompt that is
    empty or too long, a conversation whose image placeholders do not match its images, and the like.

    A subclass of ValueError, so `except ValueError` still catches it; the message names the offending
    input and says what was expected."""
