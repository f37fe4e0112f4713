"""``hemo train --config FILE [--key value ...]``: one training run into ``runs/<name>/``.

Every configuration key (see :data:`hemo.train.DEFAULTS`) is also an option; nested keys are
dotted (``--augment.strength 0.5``, ``--input.mode display``) and dashes may replace
underscores (``--image-size 128``). The resolved configuration is saved as the run's
``config.json``. Rerunning a killed or stopped run with the same ``--name`` resumes it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Prefix of the argparse destinations that hold configuration overrides.
OVERRIDE_PREFIX = "override:"


def _keys(tree: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Dotted keys of the defaults with their default values."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand (one option per configuration key)."""
    from hemo.train import ALIASES, DEFAULTS, KEY_HELP

    parser = subparsers.add_parser(
        "train",
        help="train a model into runs/<name>/ (config file + --key value overrides)",
        description="Train a model from a TOML/YAML config with command-line overrides. Writes "
        "config.json, history.csv, status.json, checkpoints, model.keras + model.json and "
        "report.json into runs/<name>/. SIGTERM/SIGINT stop cleanly at the end of the batch; "
        "rerunning with the same --name resumes from the backup.",
    )
    parser.add_argument("--config", type=Path, help="TOML, YAML or JSON configuration file")
    for key, default in _keys(DEFAULTS):
        flags = [f"--{key}"]
        if "_" in key:
            flags.append(f"--{key.replace('_', '-')}")
        flags += [f"--{alias}" for alias, target in ALIASES.items() if target == key]
        kind = "true|false" if isinstance(default, bool) else type(default).__name__
        parser.add_argument(
            *flags,
            dest=f"{OVERRIDE_PREFIX}{key}",
            default=argparse.SUPPRESS,
            nargs="?" if isinstance(default, bool) else None,
            const="true" if isinstance(default, bool) else None,
            metavar="V",
            help=f"{KEY_HELP[key]} ({kind}, default {default!r})".replace("%", "%%"),
        )
    parser.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted-key overrides given on the command line, values parsed (numbers, bools, lists)."""
    from hemo.train import parse_value

    return {
        dest[len(OVERRIDE_PREFIX) :]: parse_value(value)
        for dest, value in vars(args).items()
        if dest.startswith(OVERRIDE_PREFIX)
    }


def run(args: argparse.Namespace) -> int:
    """Resolve the configuration and train; returns 0 (finished), 1 (stopped)."""
    from hemo.runs import STATUS_FILE, STOPPED, read_json
    from hemo.train import load_config_file, resolve_config, train

    base = load_config_file(args.config) if args.config else {}
    config = resolve_config(base, overrides_from_args(args))
    path = train(config)
    status = read_json(path / STATUS_FILE) or {}
    log.info("run %s: %s (%s)", config.get("name") or path.name, status.get("state"), path)
    return 1 if status.get("state") == STOPPED else 0
