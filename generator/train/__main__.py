"""`python -m generator.train --config configs/unet.yaml [key=value …] [--resume latest|CHECKPOINT]`, or
`python -m generator.train --recipe configs/recipes/shapes64.yaml [--dry-run]` for a chain of steps.

Runs through Hugging Face Accelerate: `accelerate launch -m generator.train --config …` runs the same
command on several GPUs or machines; a plain `python -m` runs one process (here, on the CPU). A recipe
(`generator.train.recipe`) runs each of its steps as a `python -m generator.train --config …` of its own,
skipping the steps that have finished and resuming an interrupted one from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from generator.train.config import config_yaml, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generator.train", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a stage's YAML file (configs/clip.yaml, vae.yaml, unet.yaml)")
    source.add_argument("--recipe", help="a chain of steps (configs/recipes/shapes64.yaml: what `make train` runs)")
    parser.add_argument("--resume", help="`latest` (the newest checkpoint under output_dir) or a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and stop")
    parser.add_argument("--dry-run", action="store_true", help="with --recipe: print each step's command, run none")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config values that replace the file's")
    args = parser.parse_args(argv)
    if args.recipe:
        if args.overrides or args.resume or args.print_config:
            parser.error("--recipe takes no overrides, --resume or --print-config: the recipe's steps carry their own")
        from generator.train.recipe import run_recipe

        try:
            return run_recipe(args.recipe, dry_run=args.dry_run, progress=not args.no_progress)
        except (OSError, ValueError, TypeError) as error:
            parser.error(str(error))
    if args.dry_run:
        parser.error("--dry-run goes with --recipe")
    try:
        config = load_config(args.config, args.overrides)
    except (OSError, ValueError, TypeError) as error:
        parser.error(str(error))
    if args.print_config:
        print(config_yaml(config), end="")
        return 0
    from generator.train.loop import train

    final = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"final weights in {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
