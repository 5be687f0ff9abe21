import torch

from fasthpt.eval.finetune import stratified_ranks, subset_indices


def test_stratified_and_repeatable():
    per_class = [30, 25, 40, 12]
    a = stratified_ranks(per_class, 43, seed=7)
    b = stratified_ranks(per_class, 43, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    counts = [len(r) for r in a]
    assert sum(counts) == 43
    assert sorted(counts) == [10, 11, 11, 11]  # 43 // 4 = 10 each, the remainder 3 spread one by one
    for r, n in zip(a, per_class):
        assert len(set(r.tolist())) == len(r) and (r >= 0).all() and (r < n).all()
    c = stratified_ranks(per_class, 43, seed=8)
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


def test_small_class_shortfall_goes_to_others():
    ranks = stratified_ranks([50, 3, 50], 30, seed=0)
    counts = [len(r) for r in ranks]
    assert counts[1] == 3 and sum(counts) == 30 and abs(counts[0] - counts[2]) <= 1


def test_subset_indices_follow_labels():
    labels = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 1, 2])
    ranks = stratified_ranks([3, 3, 4], 6, seed=1)
    idx = subset_indices(labels, ranks)
    assert torch.bincount(labels[idx], minlength=3).tolist() == [2, 2, 2]
    assert torch.equal(idx, subset_indices(labels, stratified_ranks([3, 3, 4], 6, seed=1)))


def test_too_many_labels_is_a_user_error():
    import pytest

    from fasthpt.errors import UserError

    with pytest.raises(UserError, match="--labels"):
        stratified_ranks([3, 3], 7, seed=0)
