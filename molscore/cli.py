"""The ``molscore`` command: one subcommand per pipeline stage, each reading a run's YAML config.

molscore data CONFIG       # training / validation / test splits
molscore train CONFIG      # fit the model (resumes from the run's checkpoint)
molscore sample CONFIG     # diffusion samples
molscore simulate CONFIG   # Langevin simulation with the learned force field (resumes)
molscore evaluate CONFIG   # metrics.json and density.png
molscore run CONFIG        # all of the above
molscore STAGE CONFIG --overwrite   # delete the stage's outputs first (a resumed stage refuses changed settings)

Exit codes: 0 done, 2 bad config or input (the message names it), 3 a simulation stopped by its guard (the frames
up to the last good check are kept), 4 the run folder is in use by another process (its PID is named).
"""

import argparse
import json
import sys
from pathlib import Path

import yaml

from molscore import __version__
from molscore.config import ConfigError
from molscore.files import FolderInUseError
from molscore.pipeline import STAGES, load_run_config, run_all
from molscore.pipeline.run_folder import clear


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="molscore", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"molscore {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True)
    for name in [*STAGES, "run"]:
        p = sub.add_parser(name, help=f"run the '{name}' stage" if name != "run" else "run every stage")
        p.add_argument("config", help="run config (YAML)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument(
            "--overwrite", action="store_true",
            help="delete what this stage (with 'run': every stage) wrote in the run folder first, then run afresh",
        )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.config)
    except (ConfigError, FileNotFoundError) as err:
        print(f"molscore: {err}", file=sys.stderr)
        return 2
    progress = not args.quiet
    if args.overwrite:
        for stage in STAGES if args.stage == "run" else [args.stage]:
            for path in clear(cfg, stage):
                print(f"--overwrite: removed {path}", file=sys.stderr)
    try:
        if args.stage == "run":
            result = run_all(cfg, progress)
        elif args.stage in ("data", "evaluate"):
            result = STAGES[args.stage](cfg)
        else:
            result = STAGES[args.stage](cfg, progress=progress)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # the stages' messages name the problem
        print(f"molscore {args.stage}: {err}", file=sys.stderr)
        return 2
    except FolderInUseError as err:
        print(f"molscore {args.stage}: {err}", file=sys.stderr)
        return 4
    print(json.dumps(result, indent=2) if isinstance(result, dict) else f"wrote {result}")
    status_file = Path(cfg.run_dir) / "simulation" / "status.yaml"
    if args.stage in ("simulate", "run") and status_file.is_file():
        status = yaml.safe_load(status_file.read_text()) or {}
        if status.get("stable") is False:  # stopped by its guard: frames kept, but the run failed
            kept = f"frames up to step {status.get('last_good_step')} are kept in {status_file.parent}"
            print(f"molscore {args.stage}: simulation stopped at step {status.get('step')}: {status.get('message')}\n"
                  + kept, file=sys.stderr)  # fmt: skip
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
