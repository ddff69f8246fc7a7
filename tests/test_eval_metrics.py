"""nwa.eval on synthetic data with known answers: separated clusters, random labels, hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nwa.eval import (
    downstream_metrics,
    knn_accuracy,
    knn_classify,
    nearest_examples,
    one_class_auroc,
    proportion_interval,
    random_projection,
    retrieval_precision_at_k,
    suite_keys,
    zero_shot_top1,
    zero_shot_topk,
)
from nwa.eval.knn import vote


def clusters(n_classes: int = 4, per_class: int = 10, spread: float = 0.1, seed: int = 0):
    """Points around far-apart centres (one per class): every method should be perfect."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 8)) * 10
    y = np.repeat(np.arange(n_classes), per_class)
    return centres[y] + spread * rng.normal(size=(len(y), 8)), y


def random_points(n: int = 400, n_classes: int = 4, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)), rng.integers(0, n_classes, n)


# ----- kNN -----
def test_knn_is_perfect_on_separated_clusters_and_chance_on_random_labels():
    train_z, train_y = clusters(seed=0)
    test_z, test_y = clusters(seed=0, per_class=5)
    test_z = test_z + 0.05  # not the training points themselves
    assert knn_accuracy(train_z, train_y, test_z, test_y, k=2) == 1.0
    assert knn_accuracy(torch.tensor(train_z), torch.tensor(train_y), test_z, test_y, k=3) == 1.0
    rz, ry = random_points(seed=1)
    qz, qy = random_points(seed=2)
    assert abs(knn_accuracy(rz, ry, qz, qy, k=2) - 0.25) < 0.08


def test_knn_ties_go_to_the_nearest_neighbour_and_k_is_capped():
    train_z = np.array([[0.0], [1.0], [3.0]])
    train_y = np.array([7, 8, 8])
    # k=2 from 0.4: neighbours 0.0 (7) and 1.0 (8), a tie -> the nearer, 7
    assert knn_classify(train_z, train_y, np.array([[0.4]]), k=2).tolist() == [7]
    assert knn_classify(train_z, train_y, np.array([[0.6]]), k=2).tolist() == [8]
    assert knn_classify(train_z, train_y, np.array([[0.0]]), k=10).tolist() == [8]  # 2 of 3 vote 8
    assert vote(np.array([[3, 1, 1], [2, 5, 9]])).tolist() == [1, 2]
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(train_z, train_y, train_z, k=0)


# ----- retrieval -----
def test_retrieval_precision_matches_hand_count():
    # 1-D points: 0, 1 (class 0); 10, 11 (class 1); 12 (class 0)
    z = np.array([[0.0], [1.0], [10.0], [11.0], [12.0]])
    y = np.array([0, 0, 1, 1, 0])
    # nearest other: 0->1 (hit), 1->0 (hit), 10->11 (hit), 11->10 or 12 (tie, index order: 10, hit),
    # 12->11 (miss): 4/5
    assert retrieval_precision_at_k(z, y, k=1) == pytest.approx(4 / 5)
    # two nearest: 0:{1,10} 1/2; 1:{0,10} 1/2; 10:{11,12} 1/2; 11:{10,12} 1/2; 12:{11,10} 0 -> 2/5
    assert retrieval_precision_at_k(z, y, k=2) == pytest.approx(2 / 5)
    assert retrieval_precision_at_k(z, y, k=1, queries=[0, 4]) == pytest.approx(1 / 2)
    sep_z, sep_y = clusters(per_class=6)
    assert retrieval_precision_at_k(sep_z, sep_y, k=5) == 1.0
    rz, ry = random_points(n=200)
    assert abs(retrieval_precision_at_k(rz, ry, k=5) - 0.25) < 0.08
    with pytest.raises(ValueError, match="two models"):
        retrieval_precision_at_k(z[:1], y[:1], k=1)


def test_nearest_examples_lists_neighbours_with_concepts():
    z = np.array([[0.0], [1.0], [10.0], [11.0], [12.0]])
    y = np.array([0, 0, 1, 1, 0])
    out = nearest_examples(z, y, ["cat", "dog"], queries=[0, 4], k=2, ids=list("abcde"))
    assert [e["concept"] for e in out] == ["cat", "cat"] and out[1]["id"] == "e"
    assert [n["index"] for n in out[0]["neighbours"]] == [1, 2]
    assert [n["concept"] for n in out[1]["neighbours"]] == ["dog", "dog"]
    assert [n["match"] for n in out[0]["neighbours"]] == [True, False]
    assert out[0]["neighbours"][1]["distance"] == pytest.approx(10.0)


# ----- one-class detection -----
@pytest.mark.parametrize("method", ["knn", "ledoit_wolf"])
def test_one_class_auroc_is_one_on_separated_clusters_and_half_on_random(method):
    train_z, train_y = clusters(per_class=12, seed=0)
    test_z, test_y = clusters(per_class=6, seed=0)
    test_z = test_z + 0.03
    assert one_class_auroc(train_z, train_y, test_z, test_y, method) == pytest.approx(1.0)
    per_class = one_class_auroc(train_z, train_y, test_z, test_y, method, per_class=True)
    assert sorted(per_class) == [0, 1, 2, 3]
    rz, ry = random_points(n=300, seed=3)
    qz, qy = random_points(n=300, seed=4)
    assert abs(one_class_auroc(rz, ry, qz, qy, method) - 0.5) < 0.1


def test_one_class_auroc_skips_classes_it_cannot_score():
    train_z = np.array([[0.0, 0.0], [5.0, 5.0], [5.1, 5.0]])
    train_y = np.array([0, 1, 1])
    test_z = np.array([[0.1, 0.0], [5.0, 5.1]])
    # class 0 has one training point: scored by knn, skipped by ledoit_wolf
    assert sorted(one_class_auroc(train_z, train_y, test_z, [0, 1], "knn", per_class=True)) == [
        0,
        1,
    ]
    assert sorted(
        one_class_auroc(train_z, train_y, test_z, [0, 1], "ledoit_wolf", per_class=True)
    ) == [1]
    # only one class among the test points: no negatives, nothing to score
    assert np.isnan(one_class_auroc(train_z, train_y, test_z, [1, 1]))
    with pytest.raises(ValueError, match="method"):
        one_class_auroc(train_z, train_y, test_z, [0, 1], "svm")


# ----- zero-shot -----
def test_zero_shot_top1_picks_the_nearest_text():
    z, y = clusters(n_classes=3, per_class=4)
    texts = np.stack([z[y == c].mean(0) for c in range(3)]) * 3.0  # scale must not matter
    assert zero_shot_top1(z, texts, y) == 1.0
    assert zero_shot_top1(torch.tensor(z), torch.tensor(texts), torch.tensor(y)) == 1.0
    assert zero_shot_top1(z, texts, (y + 1) % 3) == 0.0
    with pytest.raises(ValueError, match="index"):
        zero_shot_top1(z, texts, y + 5)


def test_top_k_counts_the_concept_within_the_k_nearest_texts():
    texts = np.eye(4)
    # the model's own concept (0) is its third nearest text
    z = np.array([[0.5, 0.9, 0.8, 0.0]])
    assert zero_shot_topk(z, texts, [0], k=1) == 0.0
    assert zero_shot_topk(z, texts, [0], k=2) == 0.0
    assert zero_shot_topk(z, texts, [0], k=3) == 1.0
    assert zero_shot_topk(z, texts, [0], k=5) == 1.0  # k above the candidates: always a hit


def test_a_collapsed_encoder_scores_nothing():
    """Every model at the same point, equally far from every text: ties count as misses, so a
    degenerate encoder cannot look perfect."""
    z, texts = np.ones((6, 3)), np.ones((3, 3))
    assert zero_shot_top1(z, texts, [0, 1, 2, 0, 1, 2]) == 0.0
    assert zero_shot_topk(z, texts, [0, 1, 2, 0, 1, 2], k=2) == 0.0
    assert zero_shot_topk(z, texts, [0, 1, 2, 0, 1, 2], k=3) == 1.0


def test_proportion_interval_is_wilsons():
    lo, hi = proportion_interval(45, 60)
    # Wilson score interval of 45/60 at 95 %, by hand: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2))
    # / (1 + z^2/n) with z = 1.95996
    z, n, p = 1.959964, 60, 0.75
    mid = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert (lo, hi) == pytest.approx((mid - half, mid + half), abs=1e-6)
    assert proportion_interval(0, 20)[0] == 0.0 and proportion_interval(0, 20)[1] > 0.1
    assert proportion_interval(20, 20)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hits"):
        proportion_interval(5, 4)


# ----- the suite, projections -----
def test_downstream_suite_has_every_key_and_none_where_undefined():
    train_z, train_y = clusters(per_class=8)
    test_z, test_y = clusters(per_class=3, seed=0)
    out = downstream_metrics(train_z, train_y, test_z + 0.02, test_y)
    assert list(out) == suite_keys() and all(v == pytest.approx(1.0) for v in out.values())
    empty = downstream_metrics(np.zeros((0, 8)), [], test_z, test_y)
    assert list(empty) == suite_keys() and all(v is None for v in empty.values())
    single = downstream_metrics(train_z, train_y, test_z[:1], test_y[:1])
    # one query: retrieval among the references works, one-class has no negatives to rank
    assert single["knn_top1"] == 1.0 and single["retrieval_p@5"] == 1.0
    assert single["one_class_auroc_knn"] is None


def test_random_projection_keeps_distances_and_leaves_narrow_inputs():
    x = np.random.default_rng(0).normal(size=(20, 5000))
    p = random_projection(x, 1024)
    assert p.shape == (20, 1024) and np.array_equal(p, random_projection(x, 1024))
    d, dp = np.linalg.norm(x[0] - x[1:], axis=1), np.linalg.norm(p[0] - p[1:], axis=1)
    assert np.abs(dp / d - 1).max() < 0.15
    narrow = x[:, :100]
    assert random_projection(narrow, 1024) is narrow and random_projection(x, 0) is x


# ----- figures -----
def test_plots_write_pngs(tmp_path):
    from nwa.eval.plots import embedding_plot, project_2d, retrieval_figure

    z, y = clusters(n_classes=3, per_class=5)
    names = [["cat", "dog", "owl"][c] for c in y]
    path = embedding_plot(z, names, [c == 2 for c in y], tmp_path / "sub" / "emb.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    examples = nearest_examples(z, y, ["cat", "dog", "owl"], queries=[0, 5], k=3)
    fig = retrieval_figure(examples, tmp_path / "ret.png")
    assert fig.read_bytes()[:4] == b"\x89PNG"
    assert project_2d(z, "tsne").shape == (15, 2)
    with pytest.raises(ValueError, match="3 points"):
        project_2d(z[:2])


@pytest.mark.parametrize("n,d", [(4, 300), (10, 50), (29, 30)])
def test_ledoit_wolf_mahalanobis_matches_sklearn(n, d, monkeypatch):
    from sklearn.covariance import LedoitWolf

    from nwa.eval import oneclass

    rng = np.random.default_rng(n + d)
    fit = rng.normal(size=(n, d)) * rng.random(d) + 3.0
    test = rng.normal(size=(9, d)) + 3.0
    expected = LedoitWolf().fit(fit).mahalanobis(test)
    # D > N: the Woodbury route must give the answer, not the sklearn fallback
    monkeypatch.setattr(oneclass, "LedoitWolf", None)
    np.testing.assert_allclose(oneclass.ledoit_wolf_mahalanobis(fit, test), expected, rtol=1e-9)
