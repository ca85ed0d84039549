"""Priors of a transferable (typed-bead) model: parameters per term class, keyed by bead types, and the rules
that generate the terms of any CG topology from its bond graph.

A bead's type is the key ``RESIDUE:BEAD``: the residue name and the bead (atom) name that the CG topology
carries, joined by a colon (``ALA:CA``; ``topology.bead_type_keys``). Term classes, generated from the bond graph:

  bond       each bonded pair, by its type pair
  angle      each pair of bonds i-j, j-k sharing bead j, by the type triple (i, j, k)
  dihedral   each path of three bonds i-j-k-l (proper dihedrals), by the type quadruple
  repulsion  each pair within the cutoff, by its type pair, except pairs of one molecule joined by fewer than
             ``min_bond_separation`` bonds (their distances are set by the bonded terms)

A class and its reverse are one class: distances, angles and dihedrals are unchanged by reversing the order
of their beads. The dihedrals around one central bond describe one torsional PMF, so each one's force
constants are divided by the number of dihedrals sharing its central bond in the topology it is bound to
(as in ``fit.fit_priors``). Repulsions between types that never met in the data (say the beads of two
different molecules) take the geometric mean of the two like-type constants (the C6 combining rule), and are
marked as such.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..errors import InputError, ModelFileError
from ..geometry import SmoothCutoff
from ..units import kT_kJ_per_mol
from .fit import _values, fit_fourier, fit_harmonic, fit_repulsion
from .graph import angle_triples, dihedral_quads, dihedrals_per_central_bond, nonbonded_pairs
from .terms import PriorParameters

TERM_CLASSES = ("bond", "angle", "dihedral", "repulsion")


def canonical(types: Sequence[str]) -> Tuple[str, ...]:
    """One name for a class and its reverse."""
    types = tuple(types)
    return min(types, types[::-1])


@dataclass
class TermRules:
    """Which classes a topology's bond graph generates, and how."""
    angles: bool = True
    dihedrals: bool = True
    repulsion: bool = True
    n_dihedral_terms: int = 3
    min_bond_separation: int = 4

    @classmethod
    def from_dict(cls, data: dict) -> "TermRules":
        return cls(**data)


@dataclass
class TypedPriors:
    """Prior parameters by class: ``bonds[(a, b)] = (k, r0_nm)``, ``angles[(a, b, c)] = (k, theta0)``,
    ``dihedrals[(a, b, c, d)] = (k_n, phase_n)`` (the PMF's, before the per-central-bond division),
    ``repulsion[(a, b)] = c`` (kJ/mol nm^6, switched off at ``cutoff_nm``)."""
    rules: TermRules
    cutoff_nm: float
    bonds: Dict[tuple, tuple] = field(default_factory=dict)
    angles: Dict[tuple, tuple] = field(default_factory=dict)
    dihedrals: Dict[tuple, tuple] = field(default_factory=dict)
    repulsion: Dict[tuple, float] = field(default_factory=dict)
    combined_repulsion: List[tuple] = field(default_factory=list)  # classes set by the combining rule

    def classes(self) -> Dict[str, List[str]]:
        """Every class, as readable strings: {"bond": ["ALA:CA-ALA:C", ...], ...}."""
        tables = (self.bonds, self.angles, self.dihedrals, self.repulsion)
        return {name: ["-".join(key) for key in table] for name, table in zip(TERM_CLASSES, tables)}

    def to_dict(self) -> dict:
        def rows(table, names):
            return [{"types": list(key), **dict(zip(names, value if isinstance(value, tuple) else (value,)))}
                    for key, value in table.items()]

        return {"rules": asdict(self.rules), "cutoff_nm": self.cutoff_nm,
                "bond": rows(self.bonds, ("k", "r0_nm")), "angle": rows(self.angles, ("k", "theta0")),
                "dihedral": rows(self.dihedrals, ("k", "phase")), "repulsion": rows(self.repulsion, ("c",)),
                "combined_repulsion": [list(key) for key in self.combined_repulsion],
                "forms": {"bond": "0.5*k*(r-r0)^2", "angle": "0.5*k*(theta-theta0)^2",
                          "dihedral": "sum_n k_n/m*(1+cos(n*phi-phase_n)), m dihedrals share the central bond",
                          "repulsion": "c/r^6*S(r/cutoff), S(x)=1-10x^3+15x^4-6x^5"}}

    @classmethod
    def from_dict(cls, data: dict) -> "TypedPriors":
        def table(rows, names):
            return {tuple(row["types"]): tuple(_plain(row[n]) for n in names) for row in rows}

        return cls(TermRules.from_dict(data["rules"]), float(data["cutoff_nm"]),
                   table(data["bond"], ("k", "r0_nm")), table(data["angle"], ("k", "theta0")),
                   table(data["dihedral"], ("k", "phase")),
                   {tuple(row["types"]): float(row["c"]) for row in data["repulsion"]},
                   [tuple(key) for key in data.get("combined_repulsion", [])])

    def bonded_terms(self, types: Sequence[str], bonds: np.ndarray) -> PriorParameters:
        """Bonds, angles and dihedrals of a topology with bead ``types`` and ``bonds`` (no repulsion), or a
        ModelFileError listing every class the model has no prior for."""
        bonds = unique_bonds(bonds)
        n_beads = len(types)
        triples = angle_triples(n_beads, bonds) if self.rules.angles else np.zeros((0, 3), np.int64)
        with_dihedrals = self.rules.dihedrals and self.rules.n_dihedral_terms > 0
        quads = dihedral_quads(n_beads, bonds) if with_dihedrals else np.zeros((0, 4), np.int64)
        missing: Dict[str, set] = {name: set() for name in TERM_CLASSES}

        def lookup(table, index, name):
            values = []
            for term in index:
                key = canonical([types[i] for i in term])
                if key not in table:
                    missing[name].add("-".join(key))
                    continue
                values.append(table[key])
            return values

        bond_values = lookup(self.bonds, bonds, "bond")
        angle_values = lookup(self.angles, triples, "angle")
        dihedral_values = lookup(self.dihedrals, quads, "dihedral")
        _raise_missing(missing)
        n_terms = self.rules.n_dihedral_terms
        params = PriorParameters()
        if len(bonds):
            params.bond_pairs = bonds
            params.bond_k, params.bond_r0_nm = (np.array(v, dtype=np.float64) for v in zip(*bond_values))
        if len(triples):
            params.angle_triples = triples
            params.angle_k, params.angle_theta0 = (np.array(v, dtype=np.float64) for v in zip(*angle_values))
        if len(quads):
            params.dihedral_quads = quads
            share = 1.0 / dihedrals_per_central_bond(quads)
            # rounded to float32 once more after the division: the module's buffers and OpenMM get the same numbers
            k = np.array([k for k, _ in dihedral_values]).reshape(-1, n_terms) * share[:, None]
            params.dihedral_k = k.astype(np.float32).astype(np.float64)
            params.dihedral_phase = np.array([p for _, p in dihedral_values]).reshape(-1, n_terms)
        return params

    def required_repulsion(self, types: Sequence[str], bonds: np.ndarray, intermolecular: bool) -> Dict[tuple, str]:
        """The repulsion classes a topology can evaluate, each with where it acts ("within a molecule" or
        "between molecules"): pairs of one molecule at least ``min_bond_separation`` bonds apart, and with
        ``intermolecular``, pairs of beads of different molecules."""
        from .graph import close_pairs, molecule_index

        if not self.rules.repulsion:
            return {}
        bonds = unique_bonds(bonds)
        molecule = molecule_index(len(types), bonds)
        ordered = sorted(set(types))
        code_of = {name: k for k, name in enumerate(ordered)}
        codes_all = np.array([code_of[name] for name in types], dtype=np.int64)
        members: Dict[int, List[int]] = {}
        for bead, m in enumerate(molecule.tolist()):
            members.setdefault(m, []).append(bead)
        bonds_of: Dict[int, List[List[int]]] = {}
        for i, j in bonds.tolist():
            bonds_of.setdefault(int(molecule[i]), []).append([i, j])
        required: Dict[tuple, str] = {}
        done = set()
        for m, beads in members.items():
            local = {bead: k for k, bead in enumerate(beads)}
            inner = [(local[i], local[j]) for i, j in bonds_of.get(m, [])]
            codes = codes_all[beads]
            signature = (tuple(codes.tolist()), tuple(inner))
            if signature in done:  # copies of one molecule need its classes once
                continue
            done.add(signature)
            excluded: Dict[int, List[int]] = {}
            for i, j in close_pairs(len(beads), np.array(inner), self.rules.min_bond_separation - 1).tolist():
                excluded.setdefault(i, []).append(j)
            found = set()
            for i in range(len(beads) - 1):
                partners = np.setdiff1d(np.arange(i + 1, len(beads)), excluded.get(i, []))
                found.update(np.unique(codes[i] * len(ordered) + codes[partners]).tolist())
            for code in found:
                required.setdefault(canonical((ordered[code // len(ordered)], ordered[code % len(ordered)])),
                                    "within a molecule")
        if intermolecular and len(members) > 1:
            molecules_of: Dict[str, set] = {}
            for bead, m in enumerate(molecule.tolist()):
                molecules_of.setdefault(types[bead], set()).add(m)
            present = sorted(molecules_of)
            for a_pos, a in enumerate(present):
                for b in present[a_pos:]:
                    if len(molecules_of[a] | molecules_of[b]) > 1:  # some bead of a and of b in different molecules
                        required.setdefault(canonical((a, b)), "between molecules")
        return required

    def repulsion_matrix(self, type_names: Sequence[str], required: Dict[tuple, str]) -> np.ndarray:
        """(T, T) repulsion constants over ``type_names`` (zero for classes the model does not have); every
        ``required`` class must be there, or a ModelFileError lists those that are not."""
        n = len(type_names)
        matrix = np.zeros((n, n))
        index = {name: k for k, name in enumerate(type_names)}
        for (a, b), c in self.repulsion.items():
            if a in index and b in index:
                matrix[index[a], index[b]] = matrix[index[b], index[a]] = c
        missing = {f"repulsion {where}": {"-".join(key) for key, w in required.items()
                                          if w == where and key not in self.repulsion}
                   for where in ("within a molecule", "between molecules")}
        _raise_missing(missing, " (or bind with intermolecular=False: molecules that do not interact)"
                       if missing["repulsion between molecules"] else "")
        return matrix

    def molecule_terms(self, types: Sequence[str], bonds: np.ndarray) -> PriorParameters:
        """Every term of one small molecule with explicit repulsion pairs (the model of that molecule alone)."""
        params = self.bonded_terms(types, bonds)
        if self.rules.repulsion:
            pairs = nonbonded_pairs(len(types), bonds, self.rules.min_bond_separation)
            keys = [canonical((types[i], types[j])) for i, j in pairs]
            _raise_missing({"repulsion": {"-".join(key) for key in keys if key not in self.repulsion}})
            params.repulsion_pairs = pairs
            params.repulsion_c = np.array([self.repulsion[key] for key in keys], dtype=np.float64)
            params.repulsion_cutoff_nm = self.cutoff_nm
        return params


def unique_bonds(bonds) -> np.ndarray:
    """Bonds as sorted unique pairs (i < j): a bond listed twice, or both ways, is one bond."""
    bonds = np.sort(np.asarray(bonds, dtype=np.int64).reshape(-1, 2), axis=1)
    return np.unique(bonds, axis=0).reshape(-1, 2)


def _plain(value):
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)


def _raise_missing(missing: Dict[str, set], hint: str = "") -> None:
    lines = [f"{name}: {', '.join(sorted(keys))}" for name, keys in missing.items() if keys]
    if lines:
        raise ModelFileError("the model has no prior for these term classes of the topology (types RESIDUE:BEAD): "
                             + "; ".join(lines) + ". Train on data that contain them, or bind a topology made of the "
                             "model's molecules" + hint)


@dataclass
class MoleculeSamples:
    """One molecule's training frames for a pooled prior fit: positions (F, n, 3) nm, bead type keys, bonds."""
    positions_nm: np.ndarray
    types: List[str]
    bonds: np.ndarray


def fit_typed_priors(molecules: Sequence[MoleculeSamples], temperature_K: float, rules: TermRules,
                     cutoff_nm: float) -> TypedPriors:
    """Fit every class by Boltzmann inversion (with the Jacobians of ``fit.fit_priors``) of the coordinates of all
    molecules that have a term of that class, pooled; repulsions missing from the data come from the combining rule
    where the fitted ones determine it (``_combine_repulsion``), and stay missing elsewhere."""
    if not molecules:
        raise InputError("no molecules to fit priors to")
    kT = kT_kJ_per_mol(temperature_K)
    pooled = {name: {} for name in TERM_CLASSES}
    from ..geometry import angles as angle_fn, dihedrals as dihedral_fn, distances as distance_fn

    for molecule in molecules:
        x = np.asarray(molecule.positions_nm)
        if x.ndim != 3 or x.shape[1:] != (len(molecule.types), 3):
            raise InputError(f"positions of shape {x.shape} do not match {len(molecule.types)} bead types")
        n_beads = len(molecule.types)
        bonds = np.asarray(molecule.bonds, dtype=np.int64).reshape(-1, 2)
        terms = {"bond": (bonds, distance_fn)}
        if rules.angles:
            terms["angle"] = (angle_triples(n_beads, bonds), angle_fn)
        if rules.dihedrals and rules.n_dihedral_terms > 0:
            terms["dihedral"] = (dihedral_quads(n_beads, bonds), dihedral_fn)
        if rules.repulsion:
            terms["repulsion"] = (nonbonded_pairs(n_beads, bonds, rules.min_bond_separation), distance_fn)
        for name, (index, function) in terms.items():
            if len(index) == 0:
                continue
            values = _values(x, index, function)
            for column, term in enumerate(index):
                key = canonical([molecule.types[i] for i in term])
                pooled[name].setdefault(key, []).append(values[:, column])

    def samples(name):
        return {key: np.concatenate(parts) for key, parts in sorted(pooled[name].items())}

    switch = _numpy_switch(cutoff_nm)
    priors = TypedPriors(rules, float(cutoff_nm))
    priors.bonds = {k: _f32(fit_harmonic(v, kT, lambda c: c ** 2)) for k, v in samples("bond").items()}
    priors.angles = {k: _f32(fit_harmonic(v, kT, np.sin)) for k, v in samples("angle").items()}
    priors.dihedrals = {k: tuple(_f32(p) for p in fit_fourier(v, kT, rules.n_dihedral_terms))
                        for k, v in samples("dihedral").items()}
    priors.repulsion = {k: _f32(fit_repulsion(v, kT, switch=switch)) for k, v in samples("repulsion").items()}
    _combine_repulsion(priors)
    return priors


def _combine_repulsion(priors: TypedPriors) -> None:
    """Repulsions of type pairs the data never showed, from the combining rule c_ab = exp(s_a + s_b), with the
    per-type s fitted by least squares to the log of every fitted constant. With like-type constants alone this
    is the geometric mean sqrt(c_aa c_bb); unlike-type constants also count, so a pair of types that never met
    like with like (two side chains each seen once per molecule) still gets a constant. A pair is set only where
    the fitted constants determine s_a + s_b (its row lies in the span of theirs); others stay missing."""
    fitted = {key: c for key, c in priors.repulsion.items() if c > 0}
    names = sorted({name for key in fitted for name in key})
    if not names:
        return
    column = {name: k for k, name in enumerate(names)}

    def row(key):
        vector = np.zeros(len(names))
        for name in key:
            vector[column[name]] += 1.0
        return vector

    design = np.array([row(key) for key in fitted])
    inverse = np.linalg.pinv(design)
    s = inverse @ np.log(np.array(list(fitted.values())))
    projector = inverse @ design  # onto the span of the fitted rows
    for a_pos, a in enumerate(names):
        for b in names[a_pos:]:
            key = canonical((a, b))
            vector = row(key)
            if key not in priors.repulsion and np.abs(projector @ vector - vector).max() < 1e-8:
                priors.repulsion[key] = _f32(float(np.exp(vector @ s)))
                priors.combined_repulsion.append(key)


def _numpy_switch(cutoff_nm: float):
    import torch

    switch = SmoothCutoff(cutoff_nm)
    return lambda r: switch(torch.as_tensor(r, dtype=torch.float64)).numpy()


def _f32(value):
    """Parameters rounded to float32 once, as ``fit._float32_exact`` does for one molecule's priors."""
    if isinstance(value, (tuple, list)):
        return tuple(_f32(v) for v in value)
    array = np.asarray(value, dtype=np.float32).astype(np.float64)
    return float(array) if array.ndim == 0 else [float(v) for v in array]


def openmm_typed_prior_forces(priors: TypedPriors, type_names: Sequence[str], types: Sequence[str],
                              bonds: np.ndarray, periodic: bool, intermolecular: bool = True) -> List:
    """The priors of a bound topology as native OpenMM forces: harmonic bonds and angles, periodic torsions, and
    the switched repulsion as a CustomNonbondedForce over a table of type pairs, cut off at the model's cutoff,
    with the same exclusions as the bound module (and, without ``intermolecular``, within molecules only)."""
    import openmm

    from .graph import close_pairs, molecule_index
    from .terms import OPENMM_SWITCHED_REPULSION, openmm_prior_forces

    forces = openmm_prior_forces(priors.bonded_terms(types, bonds), len(types), 1)
    if not priors.rules.repulsion:
        return forces
    matrix = priors.repulsion_matrix(type_names, priors.required_repulsion(types, bonds, intermolecular))
    index = {name: k for k, name in enumerate(type_names)}
    expression = OPENMM_SWITCHED_REPULSION.replace("c/r^6", "table(type1, type2)/r^6")
    if not intermolecular:
        expression = expression.replace("table(type1, type2)", "delta(molecule1-molecule2)*table(type1, type2)")
    repulsion = openmm.CustomNonbondedForce(expression)
    repulsion.addGlobalParameter("rc", float(priors.cutoff_nm))
    repulsion.addTabulatedFunction("table", openmm.Discrete2DFunction(len(type_names), len(type_names),
                                                                      matrix.T.reshape(-1).tolist()))
    repulsion.addPerParticleParameter("type")
    repulsion.addPerParticleParameter("molecule")
    for name, m in zip(types, molecule_index(len(types), unique_bonds(bonds))):
        repulsion.addParticle([float(index[name]), float(m)])
    for i, j in close_pairs(len(types), bonds, priors.rules.min_bond_separation - 1):
        repulsion.addExclusion(int(i), int(j))
    repulsion.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic if periodic
                                 else openmm.CustomNonbondedForce.CutoffNonPeriodic)
    repulsion.setCutoffDistance(float(priors.cutoff_nm))
    repulsion.setName("openmm-cg typed repulsion prior")
    return forces + [repulsion]
