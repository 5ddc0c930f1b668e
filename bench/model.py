"""Benchmark of the SO3LR-style model: training throughput, inference/MD speed, compile time.

Writes ``bench/results/model.json`` and prints a summary. Not a test: the
numbers depend on the machine (and its load, recorded with the results).

* training: one optimiser step on batches of glucose (24 atoms), for every
  model size and two batch sizes -> compile time, seconds per step,
  structures/s and atoms/s;
* inference: energy + forces (+ charges, dipole) through :class:`MLCalculator`
  (host neighbour lists included, i.e. the cost of one MD step) on water
  clusters of 30 to 3,000 atoms with the short- and long-range terms on
  (10 Å long-range cutoff) -> compile time, ms per call, MD steps/s, ms/atom.

Labels are synthetic (benchmark only: cost does not depend on their values).

    python bench/model.py                       # all sizes, 30..3000 atoms
    python bench/model.py --sizes small --atoms 30 300 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from qcell_nb.model import MLCalculator, ModelConfig, fit_baseline, iterate_batches, samples_for
from qcell_nb.model.network import SO3LRModel, init_params
from qcell_nb.model.training import (LossWeights, TrainedModel, _device_batch, _optimizer, _train_step_fn,
                                     average_neighbours)

RESULTS = Path(__file__).parent / "results" / "model.json"
GLUCOSE = "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O"


def glucose_set(count: int, seed: int = 0) -> list[Atoms]:
    """Rattled glucose conformers (RDKit) with synthetic labels."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(GLUCOSE))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    base = Atoms([a.GetAtomicNum() for a in mol.GetAtoms()], positions=mol.GetConformer().GetPositions())
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = base.copy()
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.calc = SinglePointCalculator(atoms, energy=-1000.0 + rng.normal(), dipole=rng.normal(size=3),
                                           forces=rng.normal(size=(len(atoms), 3)))
        atoms.info["hirsh_ratios"] = rng.uniform(0.6, 1.0, len(atoms))
        out.append(atoms)
    return out


def water_cluster(num_atoms: int, seed: int = 0) -> Atoms:
    """About ``num_atoms`` atoms of water molecules on a jittered grid at liquid density."""
    n_mol = max(1, num_atoms // 3)
    side = int(np.ceil(n_mol ** (1 / 3)))
    spacing = 3.1  # Å: ~1 g/cm^3
    rng = np.random.default_rng(seed)
    grid = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)])[:n_mol] * spacing
    oh = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
    positions, numbers = [], []
    for centre in grid:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        positions.append(oh @ (q * np.sign(np.diag(r))).T + centre + rng.normal(0, 0.1, 3))
        numbers += [8, 1, 1]
    return Atoms(numbers, positions=np.concatenate(positions))


def bench_training(size: str, batch_size: int, steps: int) -> dict:
    structures = glucose_set(batch_size * 4)
    config = ModelConfig.for_size(size)
    baseline = fit_baseline(structures)
    samples = samples_for(structures, config, baseline)
    config = ModelConfig.for_size(size, avg_num_neighbors=average_neighbours(samples))
    params = init_params(SO3LRModel(config, baseline.scale), _device_batch(next(iterate_batches(samples, batch_size))[0]),
                         jax.random.PRNGKey(0))
    opt_state = _optimizer(1.0).init(params)
    step = _train_step_fn(config, LossWeights(), 1.0)
    batches = [_device_batch(b) for b, _ in iterate_batches(samples, batch_size)]
    lr, scale = np.float32(1e-3), np.float32(baseline.scale)
    start = time.perf_counter()
    params, opt_state, loss, _ = step(params, opt_state, batches[0], lr, scale)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start
    times = []
    for k in range(steps):
        start = time.perf_counter()
        params, opt_state, loss, _ = step(params, opt_state, batches[k % len(batches)], lr, scale)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    atoms = len(structures[0])
    return {"size": size, "batch_size": batch_size, "atoms_per_structure": atoms,
            "compile_s": round(compile_s, 2), "step_s": round(step_s, 4),
            "structures_per_s": round(batch_size / step_s, 1), "atoms_per_s": round(batch_size * atoms / step_s)}


def bench_inference(size: str, num_atoms: int, calls: int) -> dict:
    atoms = water_cluster(num_atoms)
    config = ModelConfig.for_size(size, avg_num_neighbors=20.0)
    reference = [water_cluster(30)]
    reference[0].calc = SinglePointCalculator(reference[0], energy=-100.0)
    baseline = fit_baseline(reference)
    params = init_params(SO3LRModel(config, 1.0), _device_batch(next(iterate_batches(
        samples_for(reference, config, baseline), 1))[0]), jax.random.PRNGKey(0))
    calc = MLCalculator(TrainedModel(config, baseline, params))
    atoms.calc = calc
    start = time.perf_counter()
    atoms.get_forces()
    compile_s = time.perf_counter() - start
    rng = np.random.default_rng(1)
    times = []
    for _ in range(calls):
        atoms.positions += rng.normal(0, 0.002, atoms.positions.shape)  # an MD-like small move
        start = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
    call_s = float(np.median(times))
    return {"size": size, "atoms": len(atoms), "compile_s": round(compile_s, 2), "ms_per_call": round(1e3 * call_s, 2),
            "md_steps_per_s": round(1 / call_s, 2), "ms_per_atom": round(1e3 * call_s / len(atoms), 4),
            "long_range_cutoff": config.long_range_cutoff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--atoms", nargs="+", type=int, default=[30, 100, 300, 1000, 3000])
    parser.add_argument("--inference-sizes", nargs="+", default=["small", "large"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_average_at_start": os.getloadavg(), "jax": jax.__version__,
                           "device": str(jax.devices()[0])},
               "training": [], "inference": []}
    for size in args.sizes:
        for batch_size in args.batch_sizes:
            row = bench_training(size, batch_size, args.steps)
            print("train", row, flush=True)
            results["training"].append(row)
    for size in args.inference_sizes:
        for num_atoms in args.atoms:
            row = bench_inference(size, num_atoms, max(3, args.steps // (1 + num_atoms // 1000)))
            print("infer", row, flush=True)
            results["inference"].append(row)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
