"""Periodic neighbor search against a brute-force search over all periodic images."""
import itertools

import numpy as np
import pytest
import torch

from openmm_cg.nn import neighbors
from openmm_cg.nn.neighbors import OPEN_ALL_PAIRS_BELOW, box_heights, check_box, neighbor_pairs, open_neighbor_pairs

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


# ---- open (non-periodic) search ----------------------------------------------------------------------------


def open_brute_force(positions, cutoff, molecule=None):
    """Sorted (i, j), i < j, of every pair closer than the cutoff. Every pair is looked at (in float64 with a
    margin, in blocks of rows), and the survivors are decided exactly as the search must: the norm of
    r_j - r_i in the positions' dtype."""
    n = len(positions)
    x64 = positions.double()
    first_index, second_index = [], []
    for first in range(0, n, 1024):
        rows = torch.arange(first, min(n, first + 1024))
        keep = torch.cdist(x64[rows], x64, compute_mode="donot_use_mm_for_euclid_dist") < cutoff * 1.001 + 1e-6
        keep &= torch.arange(n).unsqueeze(0) > rows.unsqueeze(1)
        if molecule is not None:
            keep &= molecule.unsqueeze(0) == molecule[rows].unsqueeze(1)
        i, j = torch.nonzero(keep, as_tuple=True)
        first_index.append(rows[i])
        second_index.append(j)
    i, j = torch.cat(first_index), torch.cat(second_index)
    close = torch.linalg.vector_norm(positions[j] - positions[i], dim=1) < cutoff
    return sorted(zip(i[close].tolist(), j[close].tolist()))


def random_walk_chains(n_chains, beads=100, step=0.38, spacing=4.0, seed=0, dtype=torch.float64):
    """Chains of beads ``step`` apart starting on a cubic grid ``spacing`` apart (n_chains * beads, 3)."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(n_chains, beads, 3, generator=g, dtype=torch.float64)
    walk = torch.cumsum(step * steps / torch.linalg.vector_norm(steps, dim=2, keepdim=True), 1)
    side = int(np.ceil(n_chains ** (1 / 3) - 1e-9))
    grid = torch.stack(torch.meshgrid([torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_chains]
    return (walk + spacing * grid.unsqueeze(1).double()).reshape(-1, 3).to(dtype)


def sorted_pairs(pairs):
    return sorted(map(tuple, pairs.tolist()))


def check_open(positions, cutoff, molecule=None):
    """open_neighbor_pairs against brute force: same pairs, each once with i < j, vectors r_j - r_i."""
    pairs, vectors = open_neighbor_pairs(positions, cutoff, molecule)
    assert pairs.dtype == torch.long and pairs.shape[1] == 2 and vectors.dtype == positions.dtype
    got = sorted_pairs(pairs)
    assert len(set(got)) == len(got), "duplicate pairs"
    assert bool((pairs[:, 0] < pairs[:, 1]).all())
    assert got == open_brute_force(positions, cutoff, molecule)
    assert torch.equal(vectors, positions[pairs[:, 1]] - positions[pairs[:, 0]])
    return got


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])


@pytest.fixture
def spy_open_paths(monkeypatch):
    """Which search served each call: 'all' or 'cells'."""
    calls = []
    all_pairs, cells = neighbors._open_all_pairs, neighbors._open_cell_list_pairs
    monkeypatch.setattr(neighbors, "_open_all_pairs", lambda *a: calls.append("all") or all_pairs(*a))
    monkeypatch.setattr(neighbors, "_open_cell_list_pairs", lambda *a: calls.append("cells") or cells(*a))
    return calls


@DTYPES
def test_open_random_points_match_brute_force(dtype, spy_open_paths):
    positions = torch.rand(2500, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 7.5 - 2.0
    got = check_open(positions.to(dtype), 1.0)
    assert spy_open_paths == ["cells"]
    assert len(got) > 2500 * 10


@DTYPES
def test_open_chains_drifted_far_apart(dtype, spy_open_paths):
    positions = random_walk_chains(20, spacing=3.0, dtype=torch.float64)
    positions[400:600, 0] += 1.0e4  # chains 4 and 5 (in contact) drift together: they still touch
    positions[1500:1600, 1] += 1.0e4
    positions[1500:1600, 2] -= 3.0e3
    positions[1000:1100, 2] -= 1.0e4  # chain 10 touched chains 9, 11, 13 and 19 before
    positions[1900:2000] += 2.5e4
    got = check_open(positions.to(dtype), 1.0)
    assert spy_open_paths == ["cells"]
    got = set(got)
    assert all((k, k + 1) in got for k in range(400, 499))  # bonds of a far chain
    assert any(400 <= i < 500 <= j < 600 for i, j in got)  # contacts between the two far chains
    assert not any((1000 <= i < 1100) != (1000 <= j < 1100) for i, j in got)  # that chain is alone now
    assert sum(1000 <= i < 1100 for i, _ in got) > 200  # but keeps its own pairs


@DTYPES
def test_open_exact_replicas(dtype, spy_open_paths):
    # on a grid of 2**-10 nm, so that the shifted copies are exact in float32 too and their pairs are the same
    one = torch.round(random_walk_chains(1, seed=4) * 1024.0) / 1024.0
    shifts = [torch.zeros(3)] * 3 + [torch.tensor([0.25, -0.125, 0.5])] * 2 + [torch.tensor([1.0e4, 0.0, -1.0e4])] * 2
    positions = torch.cat([one + shift.double() for shift in shifts]).to(dtype)
    copies = len(shifts)
    got = check_open(positions, 1.0)  # replicas interact with each other: distance 0 is inside the cutoff
    assert {(k, k + 100) for k in range(100)} <= set(got)
    molecule = torch.arange(copies).repeat_interleave(100)
    inside = check_open(positions, 1.0, molecule)
    single = open_brute_force(positions[:100], 1.0)
    assert inside == sorted((i + 100 * c, j + 100 * c) for c in range(copies) for i, j in single)
    assert spy_open_paths == ["cells", "cells"]


def test_open_molecules_on_top_of_each_other_add_no_candidates(monkeypatch):
    """With ``molecule``, replicas in the same place must not become candidates of each other: the cost
    stays that of the separate molecules, not the square of the number of replicas."""
    candidates = []
    expand = neighbors._expand_ranges
    monkeypatch.setattr(neighbors, "_expand_ranges",
                        lambda *a: (lambda out: candidates.append(len(out[0])) or out)(expand(*a)))
    # 600 beads filling a cube (served by cells on its own): its first and last cells along every axis are
    # full, so replicas that merely touched in cell space would share candidates
    one = torch.rand(600, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 4.0
    neighbors._open_cell_list_pairs(one, 1.0, None)
    single = sum(candidates)
    candidates.clear()
    replicas = torch.cat([one] * 8)
    neighbors._open_cell_list_pairs(replicas, 1.0, torch.arange(8).repeat_interleave(600))
    assert sum(candidates) == 8 * single


@pytest.mark.parametrize("search", ["all", "cells"])
@DTYPES
def test_open_pairs_at_the_cutoff(dtype, search):
    """Pairs exactly at the cutoff are out, the next representable distances below are in, at every
    offset against the cell boundaries and along every axis and diagonal direction."""
    cutoff = 1.5
    below = 1.5 - 2.0 ** -12  # exact in float32 at these coordinates, as are all sums below
    directions = [torch.eye(3)[k] * d for k in range(3) for d in (cutoff, below, cutoff + 2.0 ** -12)]
    for a, b, c in sorted(set(itertools.permutations([1.0, 1.0, 0.5]))):
        for sa, sb in itertools.product([1.0, -1.0], repeat=2):
            diagonal = torch.tensor([a * sa, b * sb, c])  # |(1, 1, 0.5)| = 1.5 exactly
            directions += [diagonal, diagonal * (1.0 - 2.0 ** -10)]
    starts, ends = [], []
    for k in range(12):
        for n, direction in enumerate(directions):
            start = torch.tensor([4.0 * k + k / 64.0, 4.0 * n + 1.5 * k / 16.0, -4.0 * (k % 3) + n / 32.0])
            starts.append(start)
            ends.append(start + direction)
    positions = torch.stack(starts + ends).to(dtype)
    half = len(starts)
    distances = torch.linalg.vector_norm(positions[half:] - positions[:half], dim=1)
    assert bool((distances == cutoff).any()) and bool((distances > cutoff).any())
    expected = [(k, k + half) for k in range(half) if float(distances[k]) < cutoff]
    assert len(expected) == 12 * (3 + 12)  # the exact boundary cases did not round
    x = positions
    i, j = (neighbors._open_all_pairs if search == "all" else neighbors._open_cell_list_pairs)(x, cutoff, None)
    assert sorted(zip(torch.minimum(i, j).tolist(), torch.maximum(i, j).tolist())) == expected
    if search == "cells":
        assert len(positions) >= OPEN_ALL_PAIRS_BELOW
        assert check_open(positions, cutoff) == expected


@pytest.mark.parametrize("n", [200, 1200])
def test_open_molecule_filter(n, spy_open_paths):
    g = torch.Generator().manual_seed(6)
    positions = torch.rand(n, 3, generator=g, dtype=torch.float64) * (n / 10.0) ** (1 / 3) * 2.0
    molecule = torch.tensor([7, -3, 100, 7, 2])[torch.randint(0, 5, (n,), generator=g)]  # unsorted, negative
    got = check_open(positions, 1.0, molecule)
    everything = check_open(positions, 1.0)
    assert len(got) < len(everything)
    assert got == [(i, j) for i, j in everything if molecule[i] == molecule[j]]
    assert spy_open_paths == ["all" if n < OPEN_ALL_PAIRS_BELOW else "cells"] * 2


def test_open_threshold_matches_the_documented_constant(spy_open_paths):
    positions = random_walk_chains(1, beads=OPEN_ALL_PAIRS_BELOW)
    open_neighbor_pairs(positions[:-1], 1.0)
    open_neighbor_pairs(positions, 1.0)
    assert spy_open_paths == ["all", "cells"]


def test_open_small_and_empty_systems():
    for n in (0, 1, 2):
        pairs, vectors = open_neighbor_pairs(torch.zeros(n, 3), 1.0)
        assert pairs.shape == (n * (n - 1) // 2, 2) and vectors.shape == (n * (n - 1) // 2, 3)
    with pytest.raises(ValueError, match="not finite"):
        open_neighbor_pairs(torch.full((OPEN_ALL_PAIRS_BELOW, 3), float("nan")), 1.0)
    with pytest.raises(ValueError, match="one index per bead"):
        open_neighbor_pairs(torch.zeros(4, 3), 1.0, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("n", [300, 1000])
def test_open_vectors_carry_gradients(n):
    positions = random_walk_chains(n // 100, spacing=3.0, seed=7).requires_grad_(True)
    _, vectors = open_neighbor_pairs(positions, 1.0)
    (grad,) = torch.autograd.grad(torch.linalg.vector_norm(vectors, dim=1).sum(), positions)
    reference = positions.detach().clone().requires_grad_(True)
    i, j = torch.tensor(open_brute_force(reference.detach(), 1.0)).T
    (expected,) = torch.autograd.grad(torch.linalg.vector_norm(reference[j] - reference[i], dim=1).sum(), reference)
    assert torch.allclose(grad, expected, rtol=0.0, atol=1e-12)
    assert float(grad.abs().max()) > 0.5


class _OpenPairs(torch.nn.Module):
    """What an exported model does: search inside forward, molecules optional."""

    def __init__(self, cutoff_nm: float):
        super().__init__()
        self.cutoff_nm = cutoff_nm

    def forward(self, positions: torch.Tensor, molecule: torch.Tensor, use_molecule: bool):
        if use_molecule:
            return open_neighbor_pairs(positions, self.cutoff_nm, molecule)
        return open_neighbor_pairs(positions, self.cutoff_nm)


def test_open_scripted_module_agrees():
    scripted = torch.jit.script(_OpenPairs(1.0))
    for n in (300, 1000):  # all pairs, cells
        positions = random_walk_chains(n // 100, spacing=3.0, seed=8)
        positions[-100:] += 1.0e4
        molecule = torch.arange(n // 100).repeat_interleave(100) % 3
        for use_molecule in (False, True):
            pairs, vectors = scripted(positions, molecule, use_molecule)
            eager_pairs, eager_vectors = open_neighbor_pairs(positions, 1.0, molecule if use_molecule else None)
            assert torch.equal(pairs, eager_pairs) and torch.equal(vectors, eager_vectors)
            assert sorted_pairs(pairs) == open_brute_force(positions, 1.0, molecule if use_molecule else None)
