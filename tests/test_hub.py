"""Hub ids (``hf-hub:ORG/NAME[/SUB][@REV]`` and bare ``ORG/NAME``) resolved offline from a cache
laid out exactly as ``huggingface_hub`` lays it out (refs, snapshots, symlinks into blobs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import constants, errors

from nwa.errors import HubError, WeightsNotFoundError
from nwa.weights import hub
from nwa.weights.io import ShardedFolder, open_weights
from tests.hf_cache import cache_repo, safetensors_bytes, torch_bytes

REPO = Path(__file__).resolve().parents[1]


def _weights(seed: int, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(n, 3, generator=g),
        "head.weight": torch.randn(2, n, generator=g),
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    """Four repos: two revisions of one model, a sharded model, a pipeline with subfolders, and
    a model stored only as a pickle."""
    root = tmp_path_factory.mktemp("hf") / "hub"
    config = json.dumps({"model_type": "toy"}).encode()
    v1 = cache_repo(
        root,
        "org/tiny",
        {"model.safetensors": safetensors_bytes(_weights(1)), "config.json": config},
        ("v1",),
    )
    main = cache_repo(
        root,
        "org/tiny",
        {"model.safetensors": safetensors_bytes(_weights(0)), "config.json": config},
    )
    shards = {"a.weight": torch.ones(3, 2), "b.weight": torch.zeros(5), "c.bias": torch.arange(4.0)}
    index = {
        "metadata": {},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00001-of-00002.safetensors",
            "c.bias": "model-00002-of-00002.safetensors",
        },
    }
    cache_repo(
        root,
        "org/sharded",
        {
            "model-00001-of-00002.safetensors": safetensors_bytes(
                {k: shards[k] for k in ("a.weight", "b.weight")}
            ),
            "model-00002-of-00002.safetensors": safetensors_bytes({"c.bias": shards["c.bias"]}),
            "model.safetensors.index.json": json.dumps(index).encode(),
            "config.json": config,
        },
    )
    cache_repo(
        root,
        "org/pipe",
        {
            "model_index.json": b"{}",
            "text_encoder/model.safetensors": safetensors_bytes(_weights(2)),
            "text_encoder/config.json": config,
            "unet/diffusion_pytorch_model.safetensors": safetensors_bytes(_weights(3, 6)),
        },
    )
    cache_repo(
        root, "org/pickled", {"pytorch_model.bin": torch_bytes(_weights(4)), "config.json": config}
    )
    return {"root": root, "main": main, "v1": v1, "shards": shards}


@pytest.fixture
def offline(cache, monkeypatch):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<the fixture> as huggingface_hub reads them (its
    constants are read at import; the subprocess test sets the real environment variables)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache["root"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _read_all(path) -> dict[str, torch.Tensor]:
    with open_weights(path) as src:
        return {k: src.get(k) for k in src.names()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parse():
    assert hub.parse("hf-hub:org/name") == hub.HubRef("org/name")
    assert hub.parse("hf-hub:org/name@v1.0") == hub.HubRef("org/name", "v1.0")
    assert hub.parse("hf-hub:org/name/text_encoder@refs/pr/3") == hub.HubRef(
        "org/name", "refs/pr/3", "text_encoder"
    )
    assert hub.parse("gpt2") == hub.HubRef("gpt2")
    assert str(hub.parse("hf-hub:org/name/unet@abc")) == "hf-hub:org/name/unet@abc"
    for bad in ("hf-hub:", "hf-hub:org/name@", "hf-hub:../etc/passwd", "hf-hub:org/ name"):
        with pytest.raises(HubError, match="not a Hub id"):
            hub.parse(bad)
    assert hub.looks_like_repo_id("org/name@main") and not hub.looks_like_repo_id("./org/name")
    assert not hub.looks_like_repo_id("/abs/path") and not hub.looks_like_repo_id("a/b/c")


def test_resolves_main_a_tag_and_a_commit(offline):
    snap = hub.resolve("hf-hub:org/tiny")
    assert snap == offline["root"] / "models--org--tiny" / "snapshots" / offline["main"]
    assert _equal(_read_all("hf-hub:org/tiny"), _weights(0))
    assert _equal(_read_all("hf-hub:org/tiny@v1"), _weights(1))
    assert _equal(_read_all(f"hf-hub:org/tiny@{offline['v1']}"), _weights(1))


def test_sharded_model(offline):
    with open_weights("hf-hub:org/sharded") as src:
        assert isinstance(src, ShardedFolder)
        assert sorted(src.names()) == sorted(offline["shards"])
        assert all(torch.equal(src.get(k), v) for k, v in offline["shards"].items())


def test_subfolder_and_pickle_only_repo(offline):
    assert _equal(_read_all("hf-hub:org/pipe/text_encoder"), _weights(2))
    assert hub.resolve("hf-hub:org/pipe/unet").name == "unet"
    assert _equal(_read_all("hf-hub:org/pickled"), _weights(4))  # weights_only=True, as for files


def test_bare_id_when_no_local_path(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _equal(_read_all("org/tiny"), _weights(0))
    assert _equal(_read_all("org/tiny@v1"), _weights(1))
    # a local folder of that name wins over the Hub
    local = tmp_path / "org" / "tiny"
    local.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(_weights(9), str(local / "model.safetensors"))
    assert _equal(_read_all("org/tiny"), _weights(9))


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("hf-hub:org/absent", "not in the Hugging Face cache"),
        ("hf-hub:org/tiny@v9", "at revision 'v9'"),
        ("hf-hub:org/tiny/nope", "'nope' is not in the repo's snapshot"),
        ("org/absent", "no such file or folder, nor a Hugging Face model"),
    ],
)
def test_missing_repo_or_revision_is_one_line(offline, tmp_path, monkeypatch, spec, fragment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubError) as err:
        open_weights(spec)
    text = str(err.value)
    assert "\n" not in text and text.startswith(spec.split("/nope")[0]) and fragment in text, text
    assert isinstance(err.value, WeightsNotFoundError)  # callers catching "not found" still do
    if "absent" in spec or "@v9" in spec:
        assert "HF_HUB_OFFLINE=1" in text


def test_gated_and_missing_repos_online_are_one_line(monkeypatch):
    """The Hub's own error types (as raised online) map to one line each."""
    response = SimpleNamespace(
        headers={}, status_code=401, request=None, url="https://huggingface.co"
    )
    cases = [
        (
            errors.GatedRepoError(
                "Access to model org/gated is restricted.\nMore text", response=response
            ),
            "gated repo: accept its terms at https://huggingface.co/org/gated",
        ),
        (
            errors.RepositoryNotFoundError(
                "404 Client Error.\nRepository Not Found", response=response
            ),
            "no such repo on the Hub",
        ),
        (errors.RevisionNotFoundError("404 revision\nmore", response=response), "no revision 'v2'"),
    ]
    for error, fragment in cases:

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr("huggingface_hub.snapshot_download", fail)
        with pytest.raises(HubError) as err:
            hub.resolve("hf-hub:org/gated@v2")
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def _inspect(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.Popen(
        [sys.executable, "-m", "nwa.weights", "inspect", *args],
        cwd=REPO,
        env=base | {"PYTHONPATH": str(REPO)} | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_inspect_cli_reads_the_cache_offline(cache, tmp_path):
    """The real environment variables: HF_HUB_CACHE, then HF_HOME (cache in $HF_HOME/hub)."""
    home = tmp_path / "hf_home"
    home.mkdir()
    (home / "hub").symlink_to(cache["root"])
    runs = {
        "cache": _inspect(
            ["hf-hub:org/tiny"], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache["root"])}
        ),
        "home": _inspect(
            ["hf-hub:org/sharded", "--layer", "a.weight"],
            {"HF_HUB_OFFLINE": "1", "HF_HOME": str(home)},
        ),
        "missing": _inspect(
            ["hf-hub:org/absent"], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache["root"])}
        ),
    }  # three processes at once: each pays torch's import time
    runs = {name: _finish(proc) for name, proc in runs.items()}
    r = runs["cache"]
    assert r.returncode == 0, r.stderr
    assert "embed.weight" in r.stdout and "[4, 3]" in r.stdout and "head.weight" in r.stdout
    assert runs["home"].returncode == 0, runs["home"].stderr
    assert "3 x 2" in runs["home"].stdout
    r = runs["missing"]
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(
        "nwa: hf-hub:org/absent: not in the Hugging Face cache"
    )
    assert "Traceback" not in r.stderr


def test_patterns_sent_to_the_hub(monkeypatch, tmp_path):
    """What resolve asks snapshot_download for: a model's top level by default (pickles only
    when there are no safetensors), a caller's patterns as given, one file for a file id."""
    calls = []
    (tmp_path / "sub").mkdir()
    (tmp_path / "file.bin").write_bytes(b"")

    def fake(repo_id, revision=None, allow_patterns=None, ignore_patterns=None):
        calls.append((repo_id, revision, allow_patterns, ignore_patterns))
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    hub.resolve("hf-hub:org/m@v2")
    assert calls[0] == ("org/m", "v2", [*hub.DEFAULT_PATTERNS], ["*/*"])
    assert calls[1][2] == [*hub.PICKLE_PATTERNS]  # tmp_path holds no safetensors
    calls.clear()
    hub.resolve("hf-hub:org/pipe", patterns=["unet/*.safetensors", "*.json"])
    assert calls == [("org/pipe", None, ["unet/*.safetensors", "*.json"], [])]
    calls.clear()
    hub.resolve("hf-hub:org/pipe/sub", patterns=["*.safetensors"])
    assert calls == [("org/pipe", None, ["sub/*.safetensors"], [])]
    calls.clear()
    hub.resolve("hf-hub:org/m/file.bin")
    assert calls == [("org/m", None, ["file.bin"], [])]
