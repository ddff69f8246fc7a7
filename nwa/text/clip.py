"""CLIP text encoders from a user's weights: a local path or a Hugging Face Hub id.

No package ships pretrained CLIP weights offline, so both encoders take a path: a local file or
folder, or ``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]`` (a bare ``ORG/NAME`` too, when no such local
path exists) read from the Hugging Face cache and fetched only when online
(:mod:`nwa.weights.hub`). Both check at construction that the weights exist and fit the
architecture, raising :class:`~nwa.errors.ConfigError` naming the file otherwise.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from nwa.errors import ConfigError, WeightsError
from nwa.text.encoders import TextEncoder, file_digest, quiet_loading
from nwa.weights.hub import CONFIG_PATTERNS, DEFAULT_PATTERNS, HubRef, model_path, parse, resolve
from nwa.weights.io import open_weights

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

_TEXT_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


def open_clip_names() -> tuple[str, ...]:
    """Architectures open_clip knows (its bundled configs and any added with ``add_model_config``)."""
    import open_clip

    return tuple(open_clip.list_models())


def _describe_mismatch(expected: dict[str, torch.Size], found: dict[str, torch.Size]) -> str:
    """One line naming missing, unexpected and wrongly shaped tensors (a few of each)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} (file {list(found[k])}, model {list(expected[k])})"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    return "; ".join(parts)


def _local(spec: str | Path, patterns: tuple[str, ...]) -> Path:
    """A local path, or a Hub id resolved to one; Hub failures become one ConfigError line."""
    try:
        return model_path(spec, patterns)
    except WeightsError as e:
        raise ConfigError(str(e)) from None


def open_clip_weights(spec: str | Path) -> Path:
    """The open_clip checkpoint file of a path or Hub id (a folder or repo holding
    ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``; safetensors preferred).

    Raises:
        ConfigError: Nothing there, or no open_clip checkpoint in the folder.
    """
    path = None
    for name in OPEN_CLIP_FILES:  # from the Hub, fetch the pickle only when there is no safetensors
        path = _local(spec, (name, "open_clip_config.json"))
        if path.is_file() or (path / name).is_file():
            break
    assert path is not None
    if path.is_dir():
        found = next((path / n for n in OPEN_CLIP_FILES if (path / n).is_file()), None)
        if found is None:
            raise ConfigError(f"{path}: no open_clip weights ({' or '.join(OPEN_CLIP_FILES)})")
        return found
    if not path.is_file():
        raise ConfigError(f"{path}: open_clip weights file not found")
    return path


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file (safetensors or weights-only torch pickle)."""
    try:
        with open_weights(path, lora=False) as source:
            state = {name: source.get(name) for name in source.names()}
    except WeightsError as e:
        raise ConfigError(f"{e.path}: cannot read CLIP weights: {e.reason}") from None
    # checkpoints saved from DataParallel/DDP wrap every name in "module."
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


class OpenCLIPEncoder(TextEncoder):
    """The text tower of an open_clip model, with weights from a local file.

    :meth:`encode` gives ``encode_text`` (the projected, pooled embedding); :meth:`token_states`
    the states after the final layer norm (the input Stable Diffusion's UNet attends to). The
    causal mask makes the first ``max_length`` states independent of later tokens, so truncating
    the 77-token context is exact.

    Args:
        model_name: An open_clip architecture, e.g. ``ViT-B-32``.
        weights_path: The full CLIP checkpoint (``.safetensors``, or ``.pt``/``.bin`` read with
            ``weights_only=True``), e.g. ``open_clip_pytorch_model.bin``; or a folder or Hub id
            holding one (``hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K``).
        cache_dir: Folder of the on-disk cache; ``None`` caches in memory only.
        batch_size: Texts per forward pass on a cache miss.
        device: Torch device.

    Raises:
        ConfigError: Unknown architecture, missing file, or weights that do not fit the model.
    """

    def __init__(
        self,
        model_name: str,
        weights_path: str | Path | None,
        cache_dir: str | Path | None = None,
        batch_size: int = 1,
        device: str = "cpu",
    ) -> None:
        super().__init__(cache_dir, batch_size)
        self._digest: str | None = None
        import open_clip

        if model_name not in open_clip_names():
            import difflib

            close = difflib.get_close_matches(model_name, open_clip_names(), n=3)
            raise ConfigError(f"unknown open_clip model {model_name!r}; did you mean {close}?")
        if weights_path is None:
            raise ConfigError(
                f"open_clip:{model_name} needs a local weights file (weights=...); "
                "named pretrained weights cannot be downloaded offline"
            )
        self.model_name = model_name
        self.weights_path = open_clip_weights(weights_path)
        start = time.perf_counter()
        self.model = self._build(open_clip)
        try:
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as e:  # HF-tokenizer models would need a download
            raise ConfigError(
                f"open_clip:{model_name}: cannot build its tokenizer offline ({e})"
            ) from None
        self.device = torch.device(device)
        self.model.to(self.device)
        self.context_length = int(getattr(self.model, "context_length", 77))
        with torch.no_grad():
            probe = self.tokenizer(["a"]).to(self.device)
            self.dim = int(self.model.encode_text(probe).shape[-1])
            self.token_dim = int(self._states(probe).shape[-1])
        self.load_seconds = time.perf_counter() - start

    def _build(self, open_clip: object) -> torch.nn.Module:
        with quiet_loading():
            model = open_clip.create_model(self.model_name, pretrained=None)
        state = _read_state(self.weights_path)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        problem = _describe_mismatch(expected, {k: v.shape for k, v in state.items()})
        if problem:
            raise ConfigError(
                f"{self.weights_path}: weights do not fit open_clip model {self.model_name}: {problem}"
            )
        model.load_state_dict(state, strict=True)
        # the image tower is never used here; drop it to free its memory
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()
        return model.eval()

    @property
    def model_id(self) -> str:
        if self._digest is None:
            self._digest = file_digest([self.weights_path])
        return f"open_clip:{self.model_name}:{self._digest}"

    def _states(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        if hasattr(m, "token_embedding"):  # CLIP: the text tower's parts live on the model
            cast = m.transformer.get_cast_dtype()
            x = m.token_embedding(tokens).to(cast) + m.positional_embedding.to(cast)
            x = m.transformer(x, attn_mask=m.attn_mask)
            return m.ln_final(x)
        text = getattr(m, "text", None)
        if text is not None and hasattr(text, "output_tokens"):  # CustomTextCLIP
            text.output_tokens = True
            try:
                return text(tokens)[1]
            finally:
                text.output_tokens = False
        raise ConfigError(
            f"open_clip:{self.model_name}: token states are not supported for this text tower"
        )

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def _tokens(self, texts: list[str], max_length: int) -> torch.Tensor:
        if max_length > self.context_length:
            raise ConfigError(
                f"max_length {max_length} exceeds the context length {self.context_length}"
            )
        return self._states(self.tokenizer(texts).to(self.device))[:, :max_length]


def hf_clip_folder(spec: str | Path) -> Path:
    """A transformers CLIP folder from a path or Hub id; for a Hub subfolder (a pipeline's
    ``text_encoder``) its sibling ``tokenizer`` folder is fetched as well."""
    path = _local(spec, DEFAULT_PATTERNS)
    ref = parse(str(spec)) if str(spec).startswith("hf-hub:") else None
    if ref is not None and ref.subpath:
        sibling = "/".join([*ref.subpath.split("/")[:-1], "tokenizer"])
        with contextlib.suppress(WeightsError):  # tokenizer files may sit in the folder itself
            resolve(HubRef(ref.repo_id, ref.revision, sibling), CONFIG_PATTERNS)
    return path


class HFCLIPEncoder(TextEncoder):
    """A transformers CLIP text model from a local folder (a CLIP model, or e.g. Stable
    Diffusion's ``text_encoder`` folder with the tokenizer files beside or in ``../tokenizer``).

    :meth:`encode` gives the projected embedding when the folder has a ``text_projection``
    (CLIP space), else the pooled output; :meth:`token_states` the last hidden state.

    Args:
        path: The folder (``config.json``, weights, tokenizer files), or a Hub id such as
            ``hf-hub:openai/clip-vit-base-patch32`` or ``hf-hub:ORG/SD-PIPELINE/text_encoder``
            (whose ``tokenizer`` subfolder is fetched too).
        cache_dir: Folder of the on-disk cache; ``None`` caches in memory only.
        batch_size: Texts per forward pass on a cache miss.
        device: Torch device.

    Raises:
        ConfigError: Missing folder, config, weights or tokenizer, or weights that do not fit.
    """

    def __init__(
        self,
        path: str | Path | None,
        cache_dir: str | Path | None = None,
        batch_size: int = 1,
        device: str = "cpu",
    ) -> None:
        super().__init__(cache_dir, batch_size)
        self._digest: str | None = None
        if path is None:
            raise ConfigError("hf_clip needs a model folder or Hub id (weights=...)")
        self.path = hf_clip_folder(path)
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: CLIP model folder not found")
        if not (self.path / "config.json").is_file():
            raise ConfigError(f"{self.path}: not a transformers model folder (no config.json)")
        start = time.perf_counter()
        self.tokenizer = self._load_tokenizer()
        self.model, self.project = self._load_model()
        self.device = torch.device(device)
        self.model.to(self.device)
        cfg = self.model.config
        self.token_dim = int(cfg.hidden_size)
        self.dim = int(cfg.projection_dim) if self.project else self.token_dim
        self.load_seconds = time.perf_counter() - start

    def _load_tokenizer(self) -> object:
        from transformers import AutoTokenizer

        for folder in (self.path, self.path.parent / "tokenizer"):
            try:
                with quiet_loading():
                    return AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError, TypeError):
                continue
        raise ConfigError(f"{self.path}: no tokenizer files here or in ../tokenizer")

    def _load_model(self) -> tuple[torch.nn.Module, bool]:
        """Build the model from its config and load the folder's tensors, checking every shape
        first (rather than from_pretrained, whose mismatch report is a page of console text)."""
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        try:
            config = CLIPTextConfig.from_pretrained(self.path, local_files_only=True)
        except Exception as e:  # malformed or non-CLIP config.json
            raise ConfigError(f"{self.path / 'config.json'}: not a CLIP config ({e})") from None
        try:
            source = open_weights(self.path, lora=False)
        except WeightsError as e:
            raise ConfigError(f"{e.path}: cannot read CLIP weights: {e.reason}") from None
        model = CLIPTextModelWithProjection(config)
        with source:
            # a full CLIP checkpoint also holds the vision tower: only the text keys must fit
            # transformers 5 saves a bare CLIPTextModel without the "text_model." prefix
            bare = not any(k.startswith("text_model.") for k in source.names())
            file_key = {
                (f"text_model.{k}" if bare and k.startswith(_TEXT_PARTS) else k): k
                for k in source.names()
            }
            found = {k: torch.Size(source.info(f).shape) for k, f in file_key.items()}
            project = any(k.startswith("text_projection") for k in found)
            expected = {k: v.shape for k, v in model.state_dict().items()}
            if not project:
                expected = {
                    k: v for k, v in expected.items() if not k.startswith("text_projection")
                }
            problem = _describe_mismatch(
                expected, {k: v for k, v in found.items() if k in expected}
            )
            if problem:
                raise ConfigError(
                    f"{source.path}: weights do not fit {self.path / 'config.json'}: {problem}"
                )
            model.load_state_dict({k: source.get(file_key[k]) for k in expected}, strict=False)
        return model.eval(), project

    @property
    def model_id(self) -> str:
        if self._digest is None:
            files = sorted(
                p for p in self.path.iterdir() if p.suffix in (".safetensors", ".bin", ".json")
            )
            self._digest = file_digest(files)
        return f"hf_clip:{self.path.name}:{self._digest}"

    def _batch(self, texts: list[str], **pad: object) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, truncation=True, return_tensors="pt", **pad)
        return {
            k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")
        }

    def _embed(self, texts: list[str]) -> torch.Tensor:
        batch = self._batch(texts, padding=True)
        if self.project:
            return self.model(**batch).text_embeds
        return self.model.text_model(**batch).pooler_output

    def _tokens(self, texts: list[str], max_length: int) -> torch.Tensor:
        return self.model(
            **self._batch(texts, padding="max_length", max_length=max_length)
        ).last_hidden_state
