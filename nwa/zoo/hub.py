"""Model paths as users give them: local files and folders, or Hugging Face Hub ids.

``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]`` is fetched with ``huggingface_hub.snapshot_download``
into the Hugging Face cache, whose settings apply unchanged: ``HF_HOME`` / ``HF_HUB_CACHE`` (where
the cache lives), ``HF_HUB_OFFLINE=1`` (the cache only), ``HF_TOKEN`` (gated and private repos).
"""

from __future__ import annotations

from pathlib import Path

from nwa.errors import ConfigError

HUB = "hf-hub:"


def model_path(spec: str, patterns: list[str] | None = None) -> Path:
    """A model path as users give it: a local file or folder, or ``hf-hub:ORG/NAME[/SUB][@REV]``
    fetched with ``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_OFFLINE`` and
    ``HF_TOKEN`` apply).

    Args:
        spec: The path or Hub id.
        patterns: Files to fetch, relative to the subfolder (default: weights and configs).

    Raises:
        ConfigError: A Hub id that cannot be fetched, or a local path that does not exist.
    """
    if not spec.startswith(HUB):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder")
        return path
    body, _, revision = spec[len(HUB) :].partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise ConfigError(f"{spec}: not a Hub id; write hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    chosen = patterns or ["*.safetensors", "*.json", "*.txt"]
    allow = [f"{sub}/{p}" if sub else p for p in chosen]
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=allow))
    except Exception as e:  # the Hub's error types vary by version: one line each
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ConfigError(
            f"{spec}: cannot fetch from the Hugging Face Hub or its cache ({type(e).__name__}: {first})"
        ) from None
    return folder / sub if sub else folder
