"""Does torch.compile pay for the bond-graph MLP? Times, side by side in one run, on one thread:

- the core of a DSM training step of the energy model (forward, score by autograd with create_graph, backward
  of a loss of the score: the double backward every energy-model step needs), eager against compiled;
- force evaluation for batched Langevin (forward + one backward), eager against compiled, after compilation;
- the simulation's whole force field (:meth:`~molscore.models.DiffusionModel.force_field`: network, bond and
  noise priors and the gradient by ``torch.func.grad`` in one graph) against the eager ``DiffusionModel.forces``.

    python workflows/benchmarks/compile_cost.py                 # 5 beads, batch 256 / 512 replicas
    python workflows/benchmarks/compile_cost.py --beads 22

Measured with torch 2.13 on CPU (README): compiling the training step fails ("torch.compile with aot_autograd
does not currently support double backward"); compiling the network alone made 32-replica forces 1.5x faster,
the whole force field 7.5x (0.54 against 4.1 ms, 5 beads), after ~30 s of compilation.
"""

import argparse
import time

import torch

from molscore.diffusion.sde import VPSDE
from molscore.models import DiffusionModel, ModelSpec, build_score_model
from molscore.nn.bond_graph import BondGraphMLP
from molscore.timing import median_seconds


def median_ms(fn, repeats: int = 30) -> float:
    return 1e3 * median_seconds(fn, 3, repeats)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beads", type=int, default=5, help="a linear chain of this many beads")
    parser.add_argument("--batch", type=int, default=256, help="training batch")
    parser.add_argument("--replicas", type=int, default=512, help="replicas of the force evaluation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bonds = [[i, i + 1] for i in range(args.beads - 1)]
    net = BondGraphMLP(args.beads, 3, output="energy", hidden=[128, 128, 128], bonds=bonds)
    compiled = torch.compile(net)
    x_train, t_train = torch.randn(args.batch, args.beads, 3), torch.rand(args.batch)
    x_sim, t_sim = torch.randn(args.replicas, args.beads, 3), torch.full((args.replicas,), 1e-5)

    def train_step(f):
        x = x_train.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(f(x, t_train).sum(), x, create_graph=True)
        score.pow(2).mean().backward()

    def forces(f):
        x = x_sim.clone().requires_grad_(True)
        return torch.autograd.grad(f(x, t_sim).sum(), x)[0]

    result = {"beads": args.beads, "train_eager_ms": median_ms(lambda: train_step(net))}
    try:
        train_step(compiled)
        result["train_compiled_ms"] = median_ms(lambda: train_step(compiled))
    except RuntimeError as err:
        result["train_compiled_ms"] = None
        result["train_compile_error"] = str(err).split("\n")[0]
    result["forces_eager_ms"] = median_ms(lambda: forces(net))
    began = time.perf_counter()
    forces(compiled)
    result["forces_compile_s"] = time.perf_counter() - began
    result["forces_compiled_ms"] = median_ms(lambda: forces(compiled))
    result["forces_eager_over_compiled"] = result["forces_eager_ms"] / result["forces_compiled_ms"]
    options = {"hidden": [128, 128, 128], "bonds": bonds}
    spec = ModelSpec(n_particles=args.beads, dim=3, network="bondgraph_mlp", network_options=options, bonds=bonds)
    model = DiffusionModel(spec, build_score_model(spec), VPSDE(), scale=1.0, kT=2.5)
    result["field_eager_ms"] = median_ms(lambda: model.forces(x_sim))
    field, began = model.force_field(compile=True), time.perf_counter()
    field(x_sim)
    result["field_compile_s"] = time.perf_counter() - began
    result["field_compiled_ms"] = median_ms(lambda: field(x_sim))
    result["field_eager_over_compiled"] = result["field_eager_ms"] / result["field_compiled_ms"]
    for key, value in result.items():
        print(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()
