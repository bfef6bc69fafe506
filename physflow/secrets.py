"""Secrets physflow knows of, and their removal from everything it writes or sends.

A model server that echoes the API key in an error body would otherwise put the key into the
transcript (and, through the retry prompt, back into the conversation). Known secrets are the
values of environment variables whose names say key, token, secret, password or credential, and
the values physflow is told of (``remember``: the variable a workflow names in ``llm.api_key_env``,
the key of a model server it starts). Short values are not treated as secrets: replacing a
two-letter word everywhere would mangle text and hide nothing.
"""

from __future__ import annotations

import os
import re

#: Environment variable names whose values are secrets.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|AUTH", re.IGNORECASE)
#: The shortest value taken for a secret, in characters.
MIN_SECRET = 8
REDACTED = "[redacted]"

_remembered: set[str] = set()


def remember(value: str | None) -> None:
    """Treat ``value`` as a secret from now on (in this process)."""
    if value and len(value) >= MIN_SECRET:
        _remembered.add(value)


def known_secrets() -> list[str]:
    """Every secret known now, longest first (a key that contains another is removed whole)."""
    found = {v for name, v in os.environ.items() if SECRET_NAME.search(name) and len(v) >= MIN_SECRET}
    return sorted(found | _remembered, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``[redacted]``."""
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text
