"""Adapters read only inside the folder they are given, unless told explicitly: Model-J models
from the Hugging Face cache (``hub=True``) are the one mapping out, recorded per model id."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from huggingface_hub import constants

from nwa.errors import NwaError, ZooError
from nwa.zoo.adapters.model_j import open_model_j
from nwa.zoo.adapters.model_j_lora import open_model_j_lora
from nwa.zoo.adapters.small_cnn_zoo import open_small_cnn_zoo
from tests.hf_cache import cache_repo, safetensors_bytes
from tests.test_adapters import _cnn_root, _hf_cache_model, _lora_root, _mj_weights


def _table(root, ids, splits=("train", "val")):
    root.mkdir(parents=True, exist_ok=True)
    records = [
        {"model_id": m, "dataset_chosen_targets": [i, i + 1], "split": s, "base_model": "vit"}
        for i, (m, s) in enumerate(zip(ids, splits))
    ]
    pd.DataFrame(records).to_csv(root / "metadata.csv", index=False)
    return root


def test_model_j_models_from_the_hub_cache_are_mapped_explicitly(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    commits = [
        cache_repo(cache, f"ProbeX/m{i}", {"model.safetensors": safetensors_bytes(_mj_weights(i))})
        for i in range(2)
    ]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    root = _table(tmp_path / "modelj", ["ProbeX/m0", "ProbeX/m1"])
    with pytest.raises(ZooError, match="no Hugging Face cache entries"):
        open_model_j(root)  # the cache outside the folder is not read unless asked
    zoo = open_model_j(root, hub=True)
    assert len(zoo) == 2 and zoo.meta.build["hub_models"] == 2
    assert sorted(zoo.external) == ["ProbeX/m0", "ProbeX/m1"]
    assert zoo.row("ProbeX/m1")["path"] == f"hf-hub:ProbeX/m1@{commits[1]}"
    assert (
        zoo.path_of("ProbeX/m1")
        == cache / "models--ProbeX--m1" / "snapshots" / commits[1] / "model.safetensors"
    )
    with zoo.open_model("ProbeX/m1") as src:
        assert torch.equal(src.get("classifier.weight"), _mj_weights(1)["classifier.weight"])
    # a listed model absent from the cache (offline) is one line
    _table(root, ["ProbeX/m0", "ProbeX/m9"])
    with pytest.raises(NwaError, match="hf-hub:ProbeX/m9: not in the Hugging Face cache") as err:
        open_model_j(root, hub=True)
    assert "\n" not in str(err.value)


def test_model_j_cache_entry_linked_out_of_the_folder(tmp_path):
    root = tmp_path / "modelj" / "train"
    elsewhere = _hf_cache_model(tmp_path / "elsewhere", "ProbeX/far", _mj_weights(0), {})
    _hf_cache_model(root, "ProbeX/near", _mj_weights(1), {"dataset_chosen_targets": "[1]"})
    (root / elsewhere.name).symlink_to(elsewhere)
    _table(tmp_path / "modelj", ["ProbeX/near", "ProbeX/far"], ("train", "train"))
    with pytest.raises(ZooError, match=r"id 'ProbeX/far'.*outside the zoo folder") as err:
        open_model_j(tmp_path / "modelj")
    assert "\n" not in str(err.value)


def test_model_j_lora_file_linked_out(tmp_path):
    root = _lora_root(tmp_path / "lora", "json")
    target = root / "train" / "model_idx_0001" / "pytorch_lora_weights.safetensors"
    shutil.move(target, tmp_path / "far.safetensors")
    target.symlink_to(tmp_path / "far.safetensors")
    with pytest.raises(
        ZooError, match=r"row \d \(id 'train/model_idx_0001'\).*outside the zoo folder"
    ):
        zoo = open_model_j_lora(root)
        for mid in zoo.table["id"]:
            zoo.open_model(mid).close()


def test_small_cnn_weights_linked_out(tmp_path):
    root, _ = _cnn_root(tmp_path / "cnn")
    shutil.move(root / "weights.npy", tmp_path / "far.npy")
    (root / "weights.npy").symlink_to(tmp_path / "far.npy")
    with pytest.raises(ZooError, match="weights.npy' resolves to .*outside the zoo folder"):
        open_small_cnn_zoo(root)
    (root / "weights.npy").unlink()  # a link that stays inside the folder is fine
    shutil.move(tmp_path / "far.npy", root / "real.npy")
    (root / "weights.npy").symlink_to("real.npy")
    assert len(open_small_cnn_zoo(root)) > 0
