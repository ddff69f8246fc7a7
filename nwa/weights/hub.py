"""Hugging Face Hub ids as model paths: ``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]``.

Everything in nwa that takes a model path (``open_weights``, ``python -m nwa.weights inspect``,
text-encoder weights, and the zoo builder's roots and pipelines) resolves it through
:func:`model_path`, which hands Hub ids to :func:`resolve`::

    >>> resolve("hf-hub:openai/clip-vit-base-patch32")          # the snapshot folder
    PosixPath('~/.cache/huggingface/hub/models--openai--clip-vit-base-patch32/snapshots/<sha>')
    >>> resolve("hf-hub:org/sd-pipeline/text_encoder@v1.0")     # a subfolder, at a tag
    >>> model_path("openai/clip-vit-base-patch32")               # bare id: no such local path

Files come from ``huggingface_hub.snapshot_download``, so its cache and settings apply unchanged:
``HF_HOME`` / ``HF_HUB_CACHE`` (where the cache lives), ``HF_HUB_OFFLINE=1`` (the cache only, no
network), ``HF_TOKEN`` (gated and private repos). Only the files a model needs are fetched: its
weights (``*.safetensors``, falling back to ``*.bin``/``*.pt``/``*.pth`` when a repo has no
safetensors) and its config and tokenizer files, from the repo's (or subfolder's) top level.
Every failure (missing or gated repo, unknown revision, not cached while offline, no network) is
one :class:`~nwa.errors.HubError` line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nwa.errors import HubError

PREFIX = "hf-hub:"
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin.index.json")
CONFIG_PATTERNS = ("*.json", "*.txt", "*.model", "*.yaml")
DEFAULT_PATTERNS = WEIGHT_PATTERNS + CONFIG_PATTERNS

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_BARE_ID = re.compile(rf"{_PART}/{_PART}(@[A-Za-z0-9._/-]+)?")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class HubRef:
    """A parsed Hub id.

    Attributes:
        repo_id: ``ORG/NAME`` (or a legacy single ``NAME``).
        revision: Branch, tag or commit; ``None`` for the default branch.
        subpath: A folder or file inside the repo (``""`` for the top level).
    """

    repo_id: str
    revision: str | None = None
    subpath: str = ""

    def __str__(self) -> str:
        sub = f"/{self.subpath}" if self.subpath else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{sub}{rev}"


def is_hub_id(text: str | Path) -> bool:
    """Whether ``text`` is written as a Hub id (``hf-hub:...``)."""
    return isinstance(text, str) and text.startswith(PREFIX)


def looks_like_repo_id(text: str | Path) -> bool:
    """Whether ``text`` could be a bare ``ORG/NAME[@REVISION]`` (checked only when no such local
    path exists)."""
    return isinstance(text, str) and _BARE_ID.fullmatch(text) is not None


def parse(spec: str) -> HubRef:
    """``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]`` (or the same without the prefix) -> :class:`HubRef`.

    The revision follows the last ``@`` (branch names may hold ``/``: ``@refs/pr/3``).

    Raises:
        HubError: Not of that form.
    """
    body = spec.removeprefix(PREFIX)
    body, at, revision = body.rpartition("@") if "@" in body else (body, "", "")
    parts = [p for p in body.split("/") if p]
    if not parts or not all(re.fullmatch(_PART, p) for p in parts) or (at and not revision):
        raise HubError(spec, "not a Hub id; write hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]")
    repo = "/".join(parts[:2]) if len(parts) > 1 else parts[0]
    return HubRef(repo, revision or None, "/".join(parts[2:]))


def resolve(spec: str | HubRef, patterns: tuple[str, ...] | list[str] | None = None) -> Path:
    """The local path of a Hub id, downloading what is missing unless ``HF_HUB_OFFLINE`` is set.

    Args:
        spec: ``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]``, or a :class:`HubRef`.
        patterns: File patterns to fetch (``fnmatch``: ``*`` also matches ``/``), relative to
            the subfolder; e.g. ``["unet/*.safetensors", "*.json"]`` for part of a pipeline.
            Default: :data:`DEFAULT_PATTERNS` at the top level of the repo or subfolder only,
            then :data:`PICKLE_PATTERNS` there when it holds no safetensors. When the id names
            a file, that file alone.

    Returns:
        The snapshot folder (or the subfolder or file inside it) in the Hugging Face cache.

    Raises:
        HubError: Invalid id; repo missing, private or gated; unknown revision; not cached while
            offline; the Hub unreachable and nothing cached; the path absent from the snapshot.
    """
    ref = spec if isinstance(spec, HubRef) else parse(spec)
    sub = ref.subpath
    if sub.endswith(_WEIGHT_SUFFIXES):
        folder = _download(ref, [sub], [])
    else:
        prefix = f"{sub}/" if sub else ""
        if patterns is None:  # a model's own files: the top level of the repo or subfolder
            top = [prefix + "*/*"]
            folder = _download(ref, [prefix + p for p in DEFAULT_PATTERNS], top)
            if not _has_weights(folder / sub):
                folder = _download(ref, [prefix + p for p in PICKLE_PATTERNS], top)
        else:  # the caller's patterns, e.g. a pipeline's "unet/*.safetensors"
            folder = _download(ref, [prefix + p for p in patterns], [])
    path = folder / sub if sub else folder
    if not path.exists():
        raise HubError(str(ref), f"{sub!r} is not in the repo's snapshot {folder}")
    return path


def model_path(path: str | Path, patterns: tuple[str, ...] | list[str] | None = None) -> Path:
    """A model path as users give it: a local file or folder, ``hf-hub:...``, or a bare
    ``ORG/NAME[@REVISION]`` when no such local path exists.

    Local paths are returned as given (``~`` expanded) without touching the disk beyond one
    ``exists`` check for a string that could also be a repo id.

    Raises:
        HubError: A Hub id that cannot be resolved (see :func:`resolve`).
    """
    if is_hub_id(path):
        return resolve(str(path), patterns)
    local = Path(path).expanduser()
    if looks_like_repo_id(path) and not local.exists():
        try:
            return resolve(parse(str(path)), patterns)
        except HubError as e:
            raise HubError(
                str(path), f"no such file or folder, nor a Hugging Face model: {e.reason}"
            ) from None
    return local


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def _download(ref: HubRef, allow: list[str], ignore: list[str]) -> Path:
    """``snapshot_download`` with its errors as one :class:`HubError` line each."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        return Path(
            huggingface_hub.snapshot_download(
                ref.repo_id, revision=ref.revision, allow_patterns=allow, ignore_patterns=ignore
            )
        )
    except Exception as e:  # the Hub's errors vary by version; each gets one line below
        raise HubError(str(ref), _reason(e, ref, constants)) from None


def _reason(error: Exception, ref: HubRef, constants: object) -> str:
    """One line for a ``snapshot_download`` failure."""
    from huggingface_hub import errors

    name = type(error).__name__
    url = f"https://huggingface.co/{ref.repo_id}"
    cache = getattr(constants, "HF_HUB_CACHE", "the Hugging Face cache")
    if isinstance(error, errors.GatedRepoError):
        return f"gated repo: accept its terms at {url}, then set HF_TOKEN (or `hf auth login`)"
    if isinstance(error, errors.RevisionNotFoundError):
        return f"no revision {ref.revision!r} in the repo"
    if isinstance(error, errors.RepositoryNotFoundError):
        return "no such repo on the Hub (or it is private: set HF_TOKEN)"
    if name == "IncompleteSnapshotError":
        return f"the cached snapshot in {cache} lacks files and the Hub cannot be reached"
    if isinstance(error, errors.LocalEntryNotFoundError):
        rev = f" at revision {ref.revision!r}" if ref.revision else ""
        if getattr(constants, "HF_HUB_OFFLINE", False):
            return f"not in the Hugging Face cache {cache}{rev}, and HF_HUB_OFFLINE=1 forbids downloading"
        return f"not in the Hugging Face cache {cache}{rev}, and the Hub cannot be reached"
    if isinstance(error, errors.HfHubHTTPError):
        return f"the Hub refused ({_first_line(error)})"
    if isinstance(error, ValueError):  # HFValidationError: an id the Hub cannot hold
        return f"not a valid repo id ({_first_line(error)})"
    return f"cannot fetch from the Hub ({name}: {_first_line(error)})"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:160]
