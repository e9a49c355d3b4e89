"""Hub model ids (``owner/name``): a snapshot downloaded through huggingface_hub, at a pinned revision.

huggingface_hub does the work: its cache (blobs shared between revisions, one snapshot folder per
commit), its progress bars, its retries. A dropped connection resumes the file where it stopped
(HTTP Range), and a run interrupted outright keeps every file it finished, so the next run fetches
only the rest. factory adds three things: the environment (``HF_ENDPOINT``, ``HF_HOME`` /
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) is read when the model is fetched, not when the library was
imported, so a long-lived process (a worker, a test) sees what is set now; only the files a model
load reads are fetched; and every failure is one sentence naming the model and the fix.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from factory.errors import ConfigError

DEFAULT_ENDPOINT = "https://huggingface.co"

# Files no transformers model load reads: other frameworks' weights and exports, and the original
# (pre-conversion) checkpoints some repositories carry beside the Hugging Face ones.
SKIPPED_FILES = [
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "onnx/*",
    "*.msgpack",
    "*.h5",
    "*.tflite",
    "*.ot",
    "original/*",
    "coreml/*",
    "openvino/*",
]


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class HubSettings:
    """Where models come from and go, as the environment says right now."""

    endpoint: str
    cache_dir: Path
    offline: bool

    @classmethod
    def from_env(cls) -> HubSettings:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
        )
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
        return cls(
            endpoint=(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            cache_dir=Path(os.path.expandvars(os.path.expanduser(cache))),
            offline=_is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")),
        )


def fetch_model(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (default: main), downloading what is missing."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub = HubSettings.from_env()
    named = f"model '{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    cached = _cached_snapshot(repo_id, revision, hub)
    if cached is None and not hub.offline:
        print(
            f"factory: downloading {repo_id}{f'@{revision}' if revision else ''} from {hub.endpoint} "
            f"into {hub.cache_dir}",
            file=sys.stderr,
        )
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hub.cache_dir,
            endpoint=hub.endpoint,
            local_files_only=hub.offline,
            ignore_patterns=SKIPPED_FILES,
        )
    except GatedRepoError:
        raise ConfigError(
            f"{named} on {hub.endpoint} is gated; accept its terms on the model page, then set HF_TOKEN (or run hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise ConfigError(
            f"{named} is not a repository on {hub.endpoint} (or it is private and no token was sent); check the id, "
            "or set HF_TOKEN for a private one"
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(
            f"revision '{revision}' does not exist in model '{repo_id}' on {hub.endpoint}; give a branch, tag or commit of it"
        ) from None
    except LocalEntryNotFoundError as exc:
        if hub.offline:
            raise ConfigError(
                f"{named} is not in the local Hugging Face cache ({hub.cache_dir}) and HF_HUB_OFFLINE is set; unset "
                "HF_HUB_OFFLINE to download it, or point model= at a local folder"
            ) from None
        reason = _reason(exc.__cause__ or exc)
        raise ConfigError(
            f"{named} is not in the local Hugging Face cache ({hub.cache_dir}) and {hub.endpoint} cannot be reached "
            f"({reason}); check the network or HF_ENDPOINT, or point model= at a local folder"
        ) from None
    except OfflineModeIsEnabled:
        raise ConfigError(
            f"{named} is not in the local Hugging Face cache ({hub.cache_dir}) and HF_HUB_OFFLINE was set when "
            "factory started; unset HF_HUB_OFFLINE to download it, or point model= at a local folder"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise ConfigError(
            f"downloading {named} from {hub.endpoint} failed ({_reason(exc)}); run again to continue (finished files are kept)"
        ) from None
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{named} holds no config.json, so it is not a transformers model; give a model repository")
    return path


def _cached_snapshot(repo_id: str, revision: str | None, hub: HubSettings) -> Path | None:
    """The snapshot folder a previous download left for this revision, if any (no network)."""
    repo = hub.cache_dir / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    folder = repo / "snapshots" / commit if commit else None
    return folder if folder is not None and (folder / "config.json").is_file() else None


def _reason(exc: BaseException) -> str:
    """The first line of an error, without the library's advice that follows it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.removeprefix("Got: ").rstrip(".")


def push_folder(
    folder: Path, repo_id: str, *, private: bool = True, message: str = "Upload model exported by factory"
) -> str:
    """Upload ``folder`` to the hub repository ``repo_id`` (created if missing); return the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    hub = HubSettings.from_env()
    if hub.offline:
        raise ConfigError(
            f"export_hub_repo={repo_id} needs the hub, but HF_HUB_OFFLINE is set; unset it, or drop export_hub_repo"
        )
    api = HfApi(endpoint=hub.endpoint)
    print(f"factory: uploading {folder} to {hub.endpoint}/{repo_id}", file=sys.stderr)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=message)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        fix = "set HF_TOKEN to a token with write access (or run hf auth login)" if status in (401, 403) else "retry"
        raise ConfigError(
            f"uploading the export to '{repo_id}' on {hub.endpoint} failed ({_reason(exc)}); {fix}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"uploading the export to '{repo_id}' failed: {hub.endpoint} cannot be reached ({_reason(exc)}); check the "
            "network or HF_ENDPOINT"
        ) from None
    return str(info.commit_url if hasattr(info, "commit_url") else info)
