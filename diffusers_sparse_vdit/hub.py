"""Finding a mode map's files (folder, HF cache or Hub repo) and pushing a folder to the Hub.

Everything goes through ``huggingface_hub`` (``hf_hub_download``, ``HfApi``), so the cache
layout, offline mode (``HF_HUB_OFFLINE=1``), tokens, endpoints and proxies behave as in every
other HF library. What this module adds: our name in the user agent, and errors that say what
to do instead of a bare ``EntryNotFoundError``.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    HTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

__all__ = ["LIBRARY_NAME", "PAPER_URL", "REPO_URL", "HUB_ERRORS", "looks_local", "check_local_folder", "resolve_file",
           "hf_api"]

LIBRARY_NAME = "diffusers-sparse-vdit"
PAPER_URL = "https://arxiv.org/abs/2506.03065"
REPO_URL = "https://pypi.org/project/diffusers-sparse-vdit/"

# What a Hub call raises when the Hub refuses or cannot be reached: HTTP errors are OSErrors,
# but a connection error is the HTTP client's own (httpx in huggingface_hub >= 1.0), not one.
HUB_ERRORS = (OSError, HTTPError)


def _version() -> str:
    from . import __version__  # lazy: the package imports this module

    return __version__


def hf_api(token: str | bool | None = None) -> HfApi:
    """An ``HfApi`` whose requests name this library (and its version) in the user agent."""
    return HfApi(token=token, library_name=LIBRARY_NAME, library_version=_version())


def looks_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` can only mean a path: ``./x``, ``../x``, ``/x``, ``~/x``, more than ``owner/name``, or a file.

    A Hub repo id is ``name`` or ``owner/name``, so none of these is one: treating them as a
    repo would only wait on the Hub to say it does not exist.
    """
    text = os.fspath(source)
    separators = "/" + (os.sep if os.sep != "/" else "") + (os.altsep or "")
    return (
        text in (".", "..")
        or text.startswith(("./", "../", "~", ".\\", "..\\"))
        or os.path.isabs(text)
        or sum(text.count(sep) for sep in separators) > 1
        or text.endswith(tuple(separators))
        or os.path.exists(text)
    )


def check_local_folder(source: str | os.PathLike, what: str = "folder") -> None:
    """Raise ``FileNotFoundError`` at once when ``source`` is a path that is not an existing folder."""
    if not os.path.isdir(source) and looks_local(source):
        if os.path.exists(source):
            raise FileNotFoundError(f"{source} is a file, not a {what}")
        raise FileNotFoundError(f"folder {source} does not exist (a path, so not a Hub repo id like 'owner/name')")


def resolve_file(
    source: str | os.PathLike,
    filename: str,
    *,
    hint: str = "",
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """Local path of ``filename`` from a folder, or from a Hub repo (downloaded or from the cache).

    Raises ``FileNotFoundError`` (an ``OSError``) when the file cannot be had, with ``hint``
    appended when the file is simply absent, and ``OSError`` when the repo cannot be reached.
    """
    source = str(source)
    check_local_folder(source, "map folder")
    if os.path.isdir(source):
        path = Path(source, subfolder or "", filename)
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent} has no {filename}. {hint}".strip())
        return path
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise FileNotFoundError(
            f"{source!r} is neither an existing folder nor a Hub repo id like 'user/name'"
        ) from None

    where = source + (f"@{revision}" if revision else "") + (f" (subfolder {subfolder!r})" if subfolder else "")
    try:
        return Path(
            hf_hub_download(
                source,
                filename,
                subfolder=subfolder,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
                force_download=force_download,
                library_name=LIBRARY_NAME,
                library_version=_version(),
            )
        )
    # LocalEntryNotFoundError first: it subclasses EntryNotFoundError in huggingface_hub >= 1.0.
    except LocalEntryNotFoundError as e:
        why = (
            "local_files_only=True"
            if local_files_only
            else "HF_HUB_OFFLINE=1"
            if constants.HF_HUB_OFFLINE
            else "the Hub could not be reached"
        )
        raise FileNotFoundError(
            f"{filename} of {where} is not in the Hugging Face cache{f' at {cache_dir}' if cache_dir else ''} "
            f"and {why}. Load it once online (or `hf download {source}`), or pass the folder it was saved to."
        ) from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"{where} has no {filename}. {hint}".strip()) from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"{source} has no revision {revision!r}: pass a branch, tag or commit it has") from e
    except RepositoryNotFoundError as e:  # also GatedRepoError
        raise OSError(
            f"cannot access the Hub repo {source!r} (and there is no folder of that name): it does not exist, or it "
            "is private or gated and needs a token with access (pass token=... or run `hf auth login`)"
        ) from e
