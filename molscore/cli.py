"""The ``molscore`` command: one subcommand per pipeline stage, each reading a run's YAML config.

molscore data CONFIG       # training / validation / test splits
molscore train CONFIG      # fit the model (resumes from the run's checkpoint)
molscore sample CONFIG     # diffusion samples
molscore simulate CONFIG   # Langevin simulation with the learned force field (resumes)
molscore evaluate CONFIG   # metrics.json and density.png
molscore run CONFIG        # all of the above
"""

import argparse
import json
import sys

from molscore import __version__
from molscore.config import ConfigError
from molscore.pipeline import STAGES, load_run_config, run_all


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="molscore", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"molscore {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True)
    for name in [*STAGES, "run"]:
        p = sub.add_parser(name, help=f"run the '{name}' stage" if name != "run" else "run every stage")
        p.add_argument("config", help="run config (YAML)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.config)
    except (ConfigError, FileNotFoundError) as err:
        print(f"molscore: {err}", file=sys.stderr)
        return 2
    progress = not args.quiet
    if args.stage == "run":
        result = run_all(cfg, progress)
    elif args.stage in ("data", "evaluate"):
        result = STAGES[args.stage](cfg)
    else:
        result = STAGES[args.stage](cfg, progress=progress)
    print(json.dumps(result, indent=2) if isinstance(result, dict) else f"wrote {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
