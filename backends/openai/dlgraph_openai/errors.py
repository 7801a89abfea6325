"""aiohttp failures and HTTP statuses become dlgraph errors, in this one place."""

from __future__ import annotations

import email.utils
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

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


def public_url(url: str) -> str:
    """`url` without the password of its userinfo (``https://user:KEY@host`` shows no KEY)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each secret replaced: servers echo keys in error
    bodies, and keys travel in URLs."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


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
