"""aiohttp failures and HTTP statuses become dlgraph errors, in this one place."""

from __future__ import annotations

import base64
import email.utils
import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager

import aiohttp

import dlgraph as dg

RETRYABLE = {408, 409, 429}


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The pause a 429 asks for: ``retry-after-ms``, else ``retry-after`` in seconds or as an HTTP date."""
    if "retry-after-ms" in headers:
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value.strip() else None
        return None if when is None else max(0.0, when.timestamp() - time.time())


def _parts(url: str) -> tuple[urllib.parse.SplitResult, bool]:
    """The URL's parts; one written without ``scheme://`` is read as ``//`` + it, so that its
    user info is still found (``TOKEN@host/v1``, ``user:KEY@host``)."""
    if "://" in url:
        return urllib.parse.urlsplit(url), False
    return urllib.parse.urlsplit("//" + url), True


def _userinfo(netloc: str) -> tuple[str | None, str | None]:
    """(user, password) as written in the URL, each None when absent."""
    if "@" not in netloc:
        return None, None
    userinfo = netloc.rpartition("@")[0]
    user, colon, password = userinfo.partition(":")
    return user, password if colon else None


def public_url(url: str) -> str:
    """`url` as reprs, identities and errors show it: no secret wherever it sits. The user
    info is masked (a bare ``TOKEN@`` whole, ``user:KEY@`` as ``user:***@``), every query value
    (``?api-key=***``) and the fragment too."""
    parts, schemeless = _parts(url)
    user, password = _userinfo(parts.netloc)
    host = parts.netloc.rpartition("@")[2]
    netloc = host if user is None else (f"{user}:***@{host}" if password else f"***@{host}")
    query = "&".join(
        f"{item.partition('=')[0]}=***" if "=" in item else "***"
        for item in parts.query.split("&")
        if item
    )
    shown = urllib.parse.urlunsplit(
        parts._replace(netloc=netloc, query=query, fragment="***" if parts.fragment else "")
    )
    return shown.removeprefix("//") if schemeless else shown


def url_secrets(url: str) -> tuple[str, ...]:
    """What `public_url` hides: the user info's secrets, query values, the fragment; as
    written and decoded."""
    parts, _ = _parts(url)
    user, password = _userinfo(parts.netloc)
    found = [password if password else user]
    for item in parts.query.split("&"):
        found.append(item.partition("=")[2] if "=" in item else item)
    found.append(parts.fragment)
    secrets = {text for text in found if text}
    return tuple(sorted(secrets | {urllib.parse.unquote_plus(text) for text in secrets}))


MIN_SECRET_CHARS = 4
"""Shorter values are not redacted: they would mangle every message and hide nothing."""
MIN_FRAGMENT_CHARS = 8
"""A base64 fragment of a secret shorter than this could match ordinary text."""


def encoded_forms(secret: str) -> set[str]:
    """How a server may echo `secret`: as is, URL-encoded, JSON-escaped, and base64-encoded
    on its own or inside a longer encoded text (``Basic base64(user:KEY)``): for each of the
    three alignments a secret can have in base64, the characters that only it determines."""
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
    }
    raw = secret.encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.add(encode(raw).decode())
        for offset in range(3):
            encoded = encode(b"\0" * offset + raw).decode()
            fragment = encoded[-(-8 * offset // 6) : 8 * (offset + len(raw)) // 6]
            if len(fragment) >= MIN_FRAGMENT_CHARS:
                forms.add(fragment)
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret replaced by ``***``, in every form `encoded_forms` knows:
    servers echo keys in error bodies, and keys travel in URLs and headers."""
    forms = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:
            forms |= encoded_forms(secret)
    if not forms:
        return text
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(pattern, "***", text, flags=re.IGNORECASE)


@contextmanager
def scrubbed(secrets: Sequence[str | None]) -> Iterator[None]:
    """Any dlgraph error leaving the block carries no secret: its message is redacted, and
    a cause whose text holds one is dropped."""
    try:
        yield
    except dg.BackendError as error:
        error.message = redact(error.message, *secrets)
        error.args = (error.message,)
        cause = error.__cause__ or error.__context__
        if cause is not None and redact(repr(cause), *secrets) != repr(cause):
            error.__cause__ = None
            error.__suppress_context__ = True
        raise


def server_message(body: str) -> str:
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return str(message) if message else body[:500]
    except (ValueError, AttributeError):
        return body[:500]


def status_error(
    status: int, body: str, headers: Mapping[str, str], where: str, secrets: Sequence[str | None]
) -> dg.BackendError:
    message = redact(f"{where}: HTTP {status}: {server_message(body)}", *secrets)
    if status == 429:
        return dg.RateLimited(message, retry_after_s=retry_after_s(headers))
    if status in RETRYABLE or status >= 500:
        return dg.TransientError(message)
    return dg.RequestRejected(message)


@asynccontextmanager
async def translated(
    where: str, timeout_s: float, secrets: Sequence[str | None], *, reached_before: bool = False
) -> AsyncIterator[None]:
    """Raise dlgraph errors, `from` the original, for failures inside the block; no message
    carries the key.

    A server that cannot be reached is unavailable (a wrong address fails at once), unless it
    was `reached_before`: then it is most likely restarting, and the failure is transient, so
    the engine's retries pick the server up again when it is back (or give up at the
    deadline, naming this error)."""
    try:
        yield
    except dg.BackendError:
        raise
    except aiohttp.ClientConnectorError as error:
        reason = redact(str(error.os_error or error), *secrets)
        if reached_before:
            raise dg.TransientError(
                f"{where}: cannot connect ({reason}); it was reachable before, so it may be "
                "restarting"
            ) from None
        raise dg.BackendUnavailable(f"{where}: cannot connect ({reason})") from None
    except (
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
        aiohttp.ClientPayloadError,
    ) as error:
        raise dg.TransientError(f"{where}: connection dropped ({type(error).__name__})") from error
    except (TimeoutError, aiohttp.ServerTimeoutError) as error:
        raise dg.TransientError(f"{where}: no answer within {timeout_s:g} s") from error
    except aiohttp.ContentTypeError as error:
        raise dg.MalformedAnswer(f"{where}: answer is not JSON") from error
    except json.JSONDecodeError as error:
        raise dg.MalformedAnswer(f"{where}: malformed JSON in the answer ({error.msg})") from error
    except aiohttp.ClientError as error:
        message = redact(f"{where}: {type(error).__name__}: {error}", *secrets)
        raise dg.TransientError(message) from None
    except ValueError as error:  # aiohttp refusing to build the request (a bad URL, say)
        raise dg.RequestRejected(redact(f"{where}: {error}", *secrets)) from None
