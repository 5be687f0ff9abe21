"""Select on val, report test: the rule of the authors' agg-results.sh on hand-made curves."""

import pytest

from fasthpt.eval.selection import Curves, select_index


def test_best_val_of_the_second_half_reports_its_test():
    # n = 10: candidates are ct > round(5) = 5, i.e. indices 6..9; the first-half peak (0.99) is ignored
    val = [0.10, 0.99, 0.30, 0.40, 0.50, 0.60, 0.70, 0.85, 0.80, 0.75]
    test = [0.11, 0.98, 0.31, 0.41, 0.51, 0.61, 0.71, 0.83, 0.90, 0.74]
    i = select_index(val)
    assert i == 7 and test[i] == 0.83  # not the best test (0.90 at 8), not the first-half peak


def test_ties_keep_the_first_maximum():
    val = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 0.8, 0.8, 0.1]
    assert select_index(val) == 6


def test_the_boundary_index_round_half_to_even():
    # n = 5: round(2.5) = 2 (printf %0.0f and Python both round halves to even): candidates 3, 4
    assert select_index([0.0, 0.0, 0.0, 0.5, 0.4]) == 3
    assert select_index([0.0, 0.0, 0.9, 0.1, 0.2]) == 4  # index 2 is not a candidate
    # n = 7: round(3.5) = 4: candidates 5, 6 (index 4 is not, although it is past the middle)
    assert select_index([0.0, 0.0, 0.0, 0.0, 0.9, 0.3, 0.2]) == 5
    # the linear probe's 51 evaluations (0, 100, ..., 5000): candidates from index 27 (iteration 2700)
    val = [1.0] * 27 + [0.5] * 24
    assert select_index(val) == 27


def test_all_zero_candidates_still_report_one():
    assert select_index([0.0] * 8) == 5  # the script would report nothing (it starts from a best of 0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_too_few_evaluations_report_the_last(n):
    assert select_index([0.9] + [0.1] * (n - 1)) == n - 1


def test_no_evaluations_is_an_error():
    with pytest.raises(ValueError):
        select_index([])


def test_curves_report_fields():
    curves = Curves()
    for it, v, t in [(0, 0.1, 0.1), (100, 0.5, 0.4), (200, 0.6, 0.55), (300, 0.7, 0.6), (400, 0.65, 0.7)]:
        curves.add(it, v, t)
    out = curves.report()
    assert (out["top1"], out["val_top1"], out["best_iter"]) == (0.6, 0.7, 300)
    assert (out["final_test_top1"], out["final_val_top1"]) == (0.7, 0.65)
    assert out["curves"] == {"iter": [0, 100, 200, 300, 400], "val_top1": [0.1, 0.5, 0.6, 0.7, 0.65],
                             "test_top1": [0.1, 0.4, 0.55, 0.6, 0.7]}
