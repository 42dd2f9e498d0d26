"""The one Hugging Face Hub client of the toolkit: token, offline mode, endpoint, access check
and errors as one line, for `publish` (datasets), `publish-model` and the training side's
downloads. It uses the standard library and huggingface_hub only, so that `pretrain` may
import it (the layer rules in pyproject.toml)."""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator

DEFAULT_ENDPOINT = "https://huggingface.co"
HF_HOSTS = ("huggingface.co", "hf.co")
PROBE_TIMEOUT_S = 15.0  # the Hub client has no timeout of its own: the access check has one
# What each refused HTTP status means for an upload.
STATUS_HINTS = {
    401: "the token was rejected: set HF_TOKEN to a valid token or run `hf auth login`",
    403: "the token may not write there: use a token with write access to it",
    404: "no such repo or owner: check --repo OWNER/NAME and the token's account",
}


class PublishError(RuntimeError):
    """A publishing failure as one line that says what to do next (never holds a token)."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return True
    from huggingface_hub import constants  # the Hub client loads in ~0.5 s: when used

    return bool(constants.is_offline_mode())


def hub_endpoint(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_hub_host(host: str | None) -> bool:
    """Whether a URL's host is the Hub's (or HF_ENDPOINT's): only those get the token."""
    host = (host or "").lower()
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "")).hostname
    return (
        host in HF_HOSTS
        or host.endswith(".huggingface.co")
        or (endpoint is not None and host == endpoint)
    )


def read_token() -> str | None:
    """HF_TOKEN, else the token saved by `hf auth login`; None without one. Never printed."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    from huggingface_hub import get_token  # the Hub client loads in ~0.5 s: when used

    return get_token()


def hub_token() -> str:
    """The token an upload needs; a PublishError saying how to get one."""
    token = read_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN to a token with write access, "
            "or run `hf auth login`, then re-run"
        )
    return token


def refuse_offline(instead: str) -> None:
    """No upload can work offline: say so first, and what can be done (`instead`)."""
    if hub_offline():
        raise PublishError(
            f"HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it and re-run ({instead})"
        )


def one_line(error: BaseException, token: str) -> str:
    """The first line of an error, the token hidden."""
    first = next((x.strip() for x in str(error).splitlines() if x.strip()), type(error).__name__)
    return first.replace(token, "***") if token else first


@contextlib.contextmanager
def hub_errors(action: str, endpoint: str, token: str, kept: str) -> Iterator[None]:
    """What the Hub client raises, as one PublishError line naming the next step; `kept` says
    what was left as it was (and that a re-run continues)."""
    import httpx2  # the Hub client loads in ~0.5 s: when used
    from huggingface_hub.errors import (  # the Hub client loads in ~0.5 s: when used
        HfHubHTTPError,
        OfflineModeIsEnabled,
    )

    try:
        yield
    except PublishError:
        raise
    except OfflineModeIsEnabled as err:
        raise PublishError(
            f"{action}: HF_HUB_OFFLINE is set; unset it and re-run ({kept})"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = STATUS_HINTS.get(status, f"the Hub said: {one_line(err, token)}")
        raise PublishError(f"{action}: HTTP {status}, {hint} ({kept})") from err
    except (httpx2.TransportError, ConnectionError) as err:
        raise PublishError(
            f"{action}: cannot reach {endpoint} ({one_line(err, token)}); check the network, "
            f"proxy or HF_ENDPOINT ({kept})"
        ) from err
    except RuntimeError as err:  # the upload backend (hf_xet) reports its failures so
        raise PublishError(f"{action} failed: {one_line(err, token)} ({kept})") from err


def check_hub_access(endpoint: str, token: str, kept: str) -> str:
    """Fail fast before any upload: unreachable, or a rejected token. Returns the user name."""
    from huggingface_hub.utils import (  # the Hub client loads in ~0.5 s: when used
        build_hf_headers,
        get_session,
        hf_raise_for_status,
    )

    with hub_errors("checking the token", endpoint, token, kept):
        response = get_session().get(
            f"{endpoint}/api/whoami-v2",
            headers=build_hf_headers(token=token),
            timeout=PROBE_TIMEOUT_S,
        )
        hf_raise_for_status(response)
        return str(response.json().get("name", "?"))
