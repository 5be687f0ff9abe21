import math

from fasthpt.report import convergence_speedup, plot_convergence, results_table, speedup_sentence


def _pts():
    mk = lambda m, i, acc, wall: {"method": m, "iterations": i, "linear": acc, "knn": acc - 0.05, "wall_clock_s": wall}
    return [
        mk("scratch", 50, 0.30, 5), mk("scratch", 500, 0.50, 50), mk("scratch", 5000, 0.62, 500),
        mk("scratch", 10000, 0.62, 1000),
        mk("hpt", 50, 0.55, 6), mk("hpt", 500, 0.63, 60), mk("hpt", 5000, 0.70, 600),
        mk("hpt-bn", 50, 0.50, 4), mk("hpt-bn", 500, 0.58, 40),
        mk("direct", 0, 0.45, 0),
    ]


def test_speedup_follows_the_definition():
    s = convergence_speedup(_pts(), "hpt", "linear")
    # scratch best 0.62 first reached at 5000 (not 10000); HPT first >= 0.62 at 500
    assert (s["scratch_best"], s["scratch_iterations"], s["method_iterations"]) == (0.62, 5000, 500)
    assert s["ratio"] == 10.0 and math.isclose(s["wall_ratio"], 500 / 60)
    assert "10.0x fewer iterations" in speedup_sentence(s) and "lower bound" not in speedup_sentence(s)
    first = convergence_speedup(_pts(), "hpt", "knn")  # kNN: scratch best 0.57 at 5000; HPT 0.50, then 0.58 at 500
    assert first["reached"] and first["method_iterations"] == 500


def test_speedup_at_the_first_grid_point_is_a_lower_bound():
    pts = [p for p in _pts() if not (p["method"] == "hpt" and p["iterations"] == 50)]
    pts.append({"method": "hpt", "iterations": 50, "linear": 0.65, "wall_clock_s": 6})
    s = convergence_speedup(pts, "hpt", "linear")
    assert s["at_first_point"] and s["ratio"] == 100.0
    assert "lower bound" in speedup_sentence(s)


def test_speedup_not_reached():
    s = convergence_speedup(_pts(), "hpt-bn", "linear")
    assert not s["reached"] and s["ratio"] is None
    assert "does not reach" in speedup_sentence(s)


def test_speedup_ignores_direct_transfer_and_zero_iterations():
    pts = _pts() + [{"method": "hpt", "iterations": 0, "linear": 0.99, "wall_clock_s": 0}]
    assert convergence_speedup(pts, "hpt")["method_iterations"] == 500


def test_table_and_plot(tmp_path):
    table = results_table(_pts())
    assert table.count("\n") == len(_pts()) + 1
    assert "| hpt | 500 | 58.0 | 63.0 |" in table
    plot_convergence(_pts(), tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 5000
