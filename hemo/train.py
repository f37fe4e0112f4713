"""A training run: resolved config -> ``runs/<name>/`` with logs, checkpoints, model, card, report.

Steps of :func:`train`::

    config (file + overrides, resolved and saved) -> index -> tf.data (train: augment, class
    weights; val) -> model (registry builder, weights/init) -> phase 1: frozen backbone, head only
    -> phase 2: fine-tune the top layers (or all) at a lower LR -> best checkpoint (val AUC)
    -> threshold on val -> final model + card -> evaluation report on test

Every phase uses ``BackupAndRestore`` (kept until the run finishes), so rerunning a killed or
stopped run with the same name and settings resumes at the first epoch it had not completed;
with other settings it is refused (:func:`hemo.runs.resume_conflict`). ``status.json`` is
rewritten atomically at least every :data:`hemo.runs.HEARTBEAT_S` seconds (a heartbeat thread
beside the callbacks' writes); its ``epoch`` is the one under way, 1-based. SIGTERM/SIGINT stop
at the end of the current batch, leaving the epoch under way out of the history and the backup
(the rerun repeats it).

``--strategy multiworker`` trains through hemo's own loop (:func:`_fit_multiworker`), because
Keras 3's ``fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585); it uses
the same callbacks except the backup, so a rerun of such a run restarts the phase.

``mask_loss`` > 0 adds pixel-level supervision where the data has lesion masks (phantoms):
fit trains a view of the model (:func:`hemo.model.with_mask_head`) whose CAM layer also feeds a
1x1-convolution lesion map, scored against each image's mask on that layer's grid
(:func:`labels_and_mask_loss`); the saved model is the plain classifier.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hemo import runs
from hemo.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE, HEAD_POOL_NAMES
from hemo.config import DEFAULT_SEED, PROJECT_DIR, RSNA_LABELS, THRESHOLD_METHODS, portable_path
from hemo.errors import ConfigError, DatasetError, HemoError, ModelError, TrainingError

log = logging.getLogger(__name__)

# Settings ---------------------------------------------------------------------------------------
#: Every configuration key with its default (a config file and ``--key value`` override these).
#: A key added later must default to what hemo did before it existed: a run whose config.json
#: predates the key is read as having that default when it is reused or resumed
#: (:func:`hemo.runs.laid_over`).
DEFAULTS: dict[str, Any] = {
    "name": "",
    "data": "",
    "architecture": DEFAULT_ARCHITECTURE,
    "weights": "none",
    "init": "",
    "l2sp": 0.0,
    "mask_loss": 0.0,
    "cam_layer": "",
    "labels": "auto",
    "image_size": 256,
    "input": {
        "mode": "hu",
        "windows": ["brain", "subdural", "soft_tissue"],
        "channels": 3,
        "display_window": "brain",
        "crop_head": False,
        "mask_outside_head": False,
        "asymmetry": False,
        "hyperdensity": False,
        "align_midline": False,
        "brain_level": 0.0,
        "black_background": False,
        "dicom_head_only": False,
    },
    "seed": DEFAULT_SEED,
    "epochs": 20,
    "head_epochs": 0,
    "fine_tune_layers": 0,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "fine_tune_learning_rate": 1e-4,
    "dropout": 0.2,
    "head_pool": "average",
    "alpha": 1.0,
    "label_smoothing": 0.0,
    "ema": 0.0,
    "sam": 0.0,
    "lr_schedule": "plateau",
    "early_stopping_patience": 8,
    "checkpoint": "best",
    "class_weights": True,
    "lookalike_weights": False,
    "cache": "auto",
    "extra_train": "",
    "extra_train_rows": 0,
    "augment": {
        "strength": 1.0,
        "mixup": 0.0,
        "gamma": 0.0,
        "blur": 0.0,
        "lesion": 0.0,
        "jitter_maps": True,
    },
    "threshold": {"method": "youden", "target_sensitivity": 0.9, "referral_accuracy": 0.98},
    "density": False,
    "strategy": "default",
    "steps_per_epoch": 0,
    "save_h5": False,
    "export": "",
    "notes": "",
}
#: What each key of :data:`DEFAULTS` does and which values it takes (``hemo train --help``).
KEY_HELP: dict[str, str] = {
    "name": "run name: the run folder runs/NAME (default: run-DATE-TIME); the same name resumes",
    "data": "dataset folder or index.parquet (hemo index, hemo download, hemo demo-data)",
    "architecture": "compact | resnet50 | densenet121 | efficientnet_b0 | mobilenet_v2",
    "weights": "initial weights: none | imagenet (Keras download, needs network; not for "
    "compact) | FILE.weights.h5",
    "init": "a hemo model (.keras with its card) whose weights start this run, layer by layer "
    "where names and shapes match (e.g. phantom pre-training)",
    "l2sp": "L2-SP strength: pull the weights copied from init back towards their start (0: off)",
    "mask_loss": "weight of a per-cell lesion-mask loss on the CAM layer (phantoms with "
    "masks; 0: off)",
    "cam_layer": "Grad-CAM layer recorded in the card ('': the architecture's default)",
    "labels": "outputs: auto (six RSNA labels when the index knows every subtype) | any | rsna",
    "image_size": "input side in pixels (square)",
    "input.mode": "hu (HU windows; DICOM only) | display (grayscale; PNG/JPG, and DICOM "
    "through display_window)",
    "input.windows": "HU window presets stacked as channels in hu mode: brain, subdural, "
    "soft_tissue, bone, stroke",
    "input.channels": "input channels (display: 1, plus one each for asymmetry and "
    "hyperdensity; hu: one per window)",
    "input.display_window": "window a DICOM is rendered through in display mode",
    "input.crop_head": "crop to the head's bounding square before resizing",
    "input.mask_outside_head": "zero everything outside the skull's convex hull",
    "input.asymmetry": "add a channel max(0, x - mirror(x)) across the head's vertical midline",
    "input.hyperdensity": "add a channel: how far each pixel inside the skull lies above the "
    "brain's median level",
    "input.align_midline": "turn the head onto its symmetry axis first",
    "input.brain_level": "scale the grayscale so the soft tissue's median lands here (0: off)",
    "input.black_background": "set a flat gray picture background to black",
    "input.dicom_head_only": "set everything outside the head's outline to air in DICOM input "
    "(the scanner's head holder)",
    "seed": "seed of weights, augmentation and order: the same seed trains the same weights",
    "epochs": "training epochs (after head_epochs)",
    "head_epochs": "epochs with the backbone frozen first (two-phase transfer learning; 0: off)",
    "fine_tune_layers": "train only the top N weighted backbone layers after head_epochs (0: all)",
    "batch_size": "images per step",
    "learning_rate": "initial learning rate",
    "fine_tune_learning_rate": "learning rate once the backbone is unfrozen (with head_epochs)",
    "dropout": "dropout before the output layer",
    "head_pool": "average | max: global pooling of the feature map",
    "alpha": "width multiplier of mobilenet_v2",
    "label_smoothing": "binary label smoothing",
    "ema": "end on the exponential moving average of the weights, momentum per step (0: off)",
    "sam": "sharpness-aware minimisation radius rho (0: off; twice the compute)",
    "lr_schedule": "plateau (halve when val AUC stalls) | cosine | constant",
    "early_stopping_patience": "epochs without a better val AUC before stopping",
    "checkpoint": "final weights: best (val AUC) | last (nothing selected on val)",
    "class_weights": "weight the classes by their inverse frequency",
    "lookalike_weights": "weight each group of look-alike images once",
    "cache": "keep preprocessed tensors: auto (in memory when they fit) | true | false",
    "extra_train": "a second dataset whose rows join the training split only",
    "extra_train_rows": "how many extra_train rows to draw (0: all)",
    "augment.strength": "rotation, zoom, shift, flips, contrast and brightness scale (0: off; "
    "1: 15 deg, 10 %)",
    "augment.mixup": "mixup Beta(a, a) of image pairs (0: off)",
    "augment.gamma": "display-curve jitter x ** e^u, u in [-g, g] (0: off; at most 1)",
    "augment.blur": "Gaussian blur up to this sigma in pixels on half the images (0: off)",
    "augment.lesion": "probability of a synthetic lesion pasted into a negative (0: off)",
    "augment.jitter_maps": "contrast, brightness and gamma jitter act on the asymmetry and "
    "hyperdensity map channels too (false: on the gray channels only)",
    "threshold.method": "operating threshold on the val split: youden | sensitivity",
    "threshold.target_sensitivity": "sensitivity the threshold must reach with method sensitivity",
    "threshold.referral_accuracy": "accuracy the decided calls must reach outside the "
    "referral band (0: no band)",
    "density": "hemo crossval only: blend P(any) with a logistic regression over density "
    "features (hemo.density: bright share inside the skull, asymmetry), fitted on the training "
    "images; threshold and metrics are the blend's",
    "strategy": "default | mirrored (GPUs of one host) | multiworker (hosts, from TF_CONFIG)",
    "steps_per_epoch": "steps per epoch (0: one pass over the training split)",
    "save_h5": "also write the model as legacy .h5",
    "export": "also copy the final model and card to models/NAME ('': no copy)",
    "notes": "free text kept in the card",
}
#: Keys a command line may spell with dashes, and short aliases.
ALIASES = {"arch": "architecture", "size": "image_size", "augment": "augment.strength"}
STRATEGIES = ("default", "mirrored", "multiworker")
LR_SCHEDULES = ("plateau", "cosine", "constant")
#: Final weights: the best val-AUC checkpoint, or the last epoch's (when val must not select,
#: e.g. a cross-validation fold's held-out images).
CHECKPOINTS = ("best", "last")
MONITOR = "val_auc"
STATUS_INTERVAL_S = 2.0
PLATEAU_FACTOR = 0.5
MIN_LEARNING_RATE = 1e-6
ACCURACY_THRESHOLD = 0.5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Prefix of a checkpoint being written (moved over the real name once complete).
PARTIAL_PREFIX = "partial-"
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")
#: Largest ``augment.gamma`` (log-gamma: x ** e^1 ... x ** e^-1) and ``augment.blur`` (sigma,
#: input pixels): beyond these the images stop looking like a CT display; ``augment.lesion``
#: is a probability.
AUGMENT_LIMITS = {"gamma": 1.0, "blur": 4.0, "lesion": 1.0}


# Configuration ----------------------------------------------------------------------------------
def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict.

    Raises:
        ConfigError: Missing file, unknown suffix or syntax error.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", source=path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"config must be one of {CONFIG_SUFFIXES}", source=path)
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read config: not UTF-8 text ({exc.reason})", source=path
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", source=path) from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # YAML's messages span lines
        raise ConfigError(f"cannot parse config: {reason}", source=path) from exc
    if not isinstance(data, dict):
        raise ConfigError("config must be a table/mapping at the top level", source=path)
    return data


def parse_value(text: str) -> Any:
    """A command-line value: bool, none, int, float, JSON list/object, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.strip().startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``["--epochs", "3", "--augment.strength=0.5", "--cache"]`` -> dotted-key dict.

    A flag without a value means ``True``. Dashes in keys become underscores.

    Raises:
        ConfigError: A token that is not ``--key``.
    """
    out: dict[str, Any] = {}
    items = list(tokens)
    i = 0
    while i < len(items):
        token = items[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"expected --key value, got {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(items) and not items[i + 1].startswith("--"):
                value = items[i + 1]
                i += 1
            else:
                value = "true"
        key = key.replace("-", "_")
        out[ALIASES.get(key, key)] = parse_value(value)
        i += 1
    return out


def resolve_config(
    base: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """DEFAULTS <- config file values <- dotted overrides, validated.

    Args:
        base: Values from a config file (nested tables allowed).
        overrides: Dotted keys from the command line (``"augment.strength": 0.5``).

    Returns:
        The full resolved configuration.

    Raises:
        ConfigError: Unknown key, or a value of the wrong type or range.
    """
    config = copy.deepcopy(DEFAULTS)
    for source, values in (("config file", base or {}), ("override", overrides or {})):
        for dotted, value in _flatten(values):
            _set_dotted(config, dotted, value, source)
    _validate(config)
    return config


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) pairs; tables known to DEFAULTS are walked into."""
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(_lookup(DEFAULTS, dotted), Mapping):
            yield from _flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    """Value at a dotted key of ``tree``, or None."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set_dotted(config: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set ``config[a][b] = value`` for ``"a.b"``, refusing keys DEFAULTS does not have."""
    parts = dotted.split(".")
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(_unknown_key(dotted, source, parts[:depth]))
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(_unknown_key(dotted, source, parts[:-1]))
    default = node[parts[-1]]
    if dotted in TEXT_OR_BOOL_KEYS:  # cache: true, false or "auto", whatever a file set before
        node[parts[-1]] = value
        return
    if isinstance(default, dict):
        raise ConfigError(f"{dotted} is a table: set its keys ({dotted}.KEY), got {value!r}")
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{dotted} must be true or false, got {value!r}")
    if isinstance(default, str) and value is None:  # --weights none: the word, not "no value"
        value = "none"
    if isinstance(default, str) and not isinstance(value, str) and dotted not in TEXT_OR_BOOL_KEYS:
        if not _is_number(value):  # --name with no value is true; a list is no name either
            raise ConfigError(f"{dotted} must be text, got {value!r}")
        value = str(value)  # --name 123: the run name "123"
    if _is_number(default) and not _is_number(value):
        raise ConfigError(f"{dotted} must be a number, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
        raise ConfigError(f"{dotted} must be an integer, got {value!r}")
    if isinstance(default, float):
        value = float(value)
    node[parts[-1]] = value


#: Text keys that also take true or false.
TEXT_OR_BOOL_KEYS = frozenset({"cache"})


def _unknown_key(dotted: str, source: str, table: Sequence[str]) -> str:
    """The message for a key DEFAULTS lacks: the keys of the table it was looked up in (dotted
    table names included), so a typo in ``[thresold]`` or ``input.crop_hed`` shows its fix."""
    node: Any = DEFAULTS
    for part in table:
        node = node[part]
    prefix = "".join(f"{part}." for part in table)
    known = sorted(
        f"{prefix}{key}" + (".*" if isinstance(value, dict) else "") for key, value in node.items()
    )
    return f"unknown {source} key {dotted!r}; known keys: {', '.join(known)}"


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate(config: dict[str, Any]) -> None:
    """Range and choice checks with messages naming the key."""
    if config["architecture"] not in ARCHITECTURES:
        raise ConfigError(
            f"architecture {config['architecture']!r} unknown; choose one of {sorted(ARCHITECTURES)}"
        )
    if config["strategy"] not in STRATEGIES:
        raise ConfigError(f"strategy {config['strategy']!r} unknown; choose one of {STRATEGIES}")
    if config["head_pool"] not in HEAD_POOL_NAMES:
        raise ConfigError(
            f"head_pool must be one of {sorted(HEAD_POOL_NAMES)}, got {config['head_pool']!r}"
        )
    if config["lr_schedule"] not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}")
    if config["checkpoint"] not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {CHECKPOINTS}, got {config['checkpoint']!r}")
    for key in ("epochs", "batch_size", "image_size"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {config[key]!r}")
    from hemo.preprocess import MAX_INPUT_SIZE, MIN_INPUT_SIZE

    if not MIN_INPUT_SIZE <= config["image_size"] <= MAX_INPUT_SIZE:  # said before data is read
        raise ConfigError(
            f"image_size must be in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}] px, got "
            f"{config['image_size']}"
        )
    if not 0 <= int(config["head_epochs"]) <= config["epochs"]:
        raise ConfigError("head_epochs must be between 0 and epochs")
    for key in ("seed", "fine_tune_layers", "early_stopping_patience", "steps_per_epoch"):
        if config[key] < 0:
            raise ConfigError(f"{key} must be an integer >= 0, got {config[key]!r}")
    for key in ("learning_rate", "fine_tune_learning_rate", "alpha"):
        if config[key] <= 0:
            raise ConfigError(f"{key} must be a number > 0, got {config[key]!r}")
    for key in ("dropout", "label_smoothing"):
        if not 0 <= config[key] < 1:
            raise ConfigError(f"{key} must be a number in [0, 1), got {config[key]!r}")
    if config["threshold"]["method"] not in THRESHOLD_METHODS:
        raise ConfigError(
            f"threshold.method must be one of {', '.join(THRESHOLD_METHODS)}, got "
            f"{config['threshold']['method']!r}"
        )
    sensitivity = config["threshold"]["target_sensitivity"]
    if not 0 < sensitivity <= 1:
        raise ConfigError(
            f"threshold.target_sensitivity must be a number in (0, 1], got {sensitivity!r}"
        )
    l2sp = config["l2sp"]
    if isinstance(l2sp, bool) or not isinstance(l2sp, int | float) or l2sp < 0:
        raise ConfigError(f"l2sp must be a number >= 0, got {l2sp!r}")
    if l2sp and not config["init"]:
        raise ConfigError("l2sp pulls weights towards an init model's: set init = 'MODEL.keras'")
    ema = config["ema"]
    if isinstance(ema, bool) or not isinstance(ema, int | float) or not 0 <= ema < 1:
        raise ConfigError(f"ema must be a number in [0, 1), got {ema!r}")
    if ema and config["checkpoint"] != "last":
        raise ConfigError(
            "ema averages the weights up to the last step; the best checkpoint holds one "
            "epoch's raw weights: set checkpoint = last"
        )
    if ema and config["strategy"] == "multiworker":
        raise ConfigError(
            "ema swaps the averaged weights in at the end of Keras fit: use "
            "strategy default or mirrored"
        )
    sam = config["sam"]
    if isinstance(sam, bool) or not isinstance(sam, int | float) or sam < 0:
        raise ConfigError(f"sam is the radius of the weight perturbation, >= 0; got {sam!r}")
    if sam and config["strategy"] == "multiworker":
        raise ConfigError(
            "sam replaces Keras fit's training step: use strategy default or mirrored"
        )
    mask_loss = config["mask_loss"]
    if isinstance(mask_loss, bool) or not isinstance(mask_loss, int | float) or mask_loss < 0:
        raise ConfigError(f"mask_loss must be a number >= 0, got {mask_loss!r}")
    if mask_loss and config["strategy"] == "multiworker":
        raise ConfigError("mask_loss trains through Keras fit: use strategy default or mirrored")
    if mask_loss and (config["augment"]["lesion"] or config["augment"]["mixup"]):
        raise ConfigError(
            "mask_loss needs a lesion mask for every training pixel: synthetic lesions "
            "(augment.lesion) and image mixes (augment.mixup) have none; turn them off"
        )
    if not isinstance(config["density"], bool):
        raise ConfigError(f"density must be true or false, got {config['density']!r}")
    if not config["data"]:
        raise ConfigError("no training data: set data = 'DIR' in the config or --data DIR")
    if config["labels"] not in ("auto", "any", "rsna"):
        raise ConfigError("labels must be auto, any or rsna")
    if config["cache"] not in ("auto", True, False):
        raise ConfigError("cache must be auto, true or false")
    if not isinstance(config["extra_train_rows"], int) or config["extra_train_rows"] < 0:
        raise ConfigError(
            f"extra_train_rows must be an integer >= 0 (0: all), got {config['extra_train_rows']!r}"
        )
    for key in ("strength", "mixup", "gamma", "blur", "lesion"):
        value = config["augment"][key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"augment.{key} must be a number >= 0, got {value!r}")
    if not isinstance(config["augment"]["jitter_maps"], bool):
        raise ConfigError(
            f"augment.jitter_maps must be true or false, got {config['augment']['jitter_maps']!r}"
        )
    for key, most in AUGMENT_LIMITS.items():
        if config["augment"][key] > most:
            raise ConfigError(f"augment.{key} must be at most {most}, got {config['augment'][key]}")
    referral = config["threshold"]["referral_accuracy"]
    if (
        isinstance(referral, bool)
        or not isinstance(referral, int | float)
        or not (referral == 0 or 0.5 < referral <= 1)
    ):
        raise ConfigError(
            "threshold.referral_accuracy is the accuracy calls outside the referral band must "
            f"reach on validation data, in (0.5, 1], or 0 for no band; got {referral!r}"
        )


def check_start(config: Mapping[str, Any]) -> None:
    """Refuse, before a run folder is made and TensorFlow starts, the ``weights`` and ``init``
    options a run would fail on in its first seconds (leaving a failed run behind).

    Args:
        config: Resolved configuration (:func:`resolve_config`).

    Raises:
        ConfigError: ``density`` on (a cross-validation's blend: ``hemo crossval``).
        ModelError: A weights file missing or a pickle, ImageNet weights for an architecture
            that has none, an ``init`` model that is missing, a pickle, not a Keras file, or
            without its card.
    """
    from hemo.modelfile import WEIGHTS_IMAGENET, check_model_file, require_card, weights_option

    if config["density"]:
        raise ConfigError(
            "density = true is fitted out-of-fold by hemo crossval (hemo crossval --config ... "
            "--export models/NAME); hemo train trains the network alone: set density = false"
        )

    kind, _ = weights_option(config["weights"])
    architecture = ARCHITECTURES[config["architecture"]]
    if kind == WEIGHTS_IMAGENET and architecture.application is None:
        with_imagenet = sorted(a.name for a in ARCHITECTURES.values() if a.application)
        raise ModelError(
            f"no ImageNet weights for the {architecture.name!r} architecture; use --weights none, "
            f"or one of {', '.join(with_imagenet)}"
        )
    if config["init"]:
        require_card(check_model_file(resolve_path(config["init"])))


#: How many of a model's spatial layers a wrong ``cam_layer`` message names (the deepest).
CAM_LAYERS_NAMED = 8


def _check_cam_layer(model, name: str) -> None:
    """Refuse a ``cam_layer`` that is not a 4-D (spatial) layer of the model, before training."""
    if not name:
        return
    spatial = [layer.name for layer in model.layers if len(getattr(layer.output, "shape", ())) == 4]
    if name not in spatial:
        named = ", ".join(spatial[-CAM_LAYERS_NAMED:])
        raise ConfigError(
            f"cam_layer {name!r} is not a spatial layer of this {model.name} model (a config "
            f"written for another architecture?); give cam_layer \"\" (--cam_layer '') for the "
            f"architecture's default, or another of its {len(spatial)} spatial layers (the "
            f"deepest: {named})"
        )


def resolve_path(value: str | os.PathLike) -> Path:
    """A user path: as given if it exists from the current folder, else from the project."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (PROJECT_DIR / path).resolve()


def check_export(value: str | os.PathLike, data: str | os.PathLike | None = None) -> Path:
    """Refuse an export path whose folder cannot be made or written, or that holds a model
    trained on other data, before any training.

    Creates the folder when missing and writes (then removes) a probe file in it. A model
    already there is replaced only by a run on the data its card names (rerunning its recipe):
    a config used as a template with ``--data`` of one's own (``configs/phantom.toml`` exports
    to ``models/phantom_rsna3``) must not overwrite a shipped model.

    Args:
        value: The ``export`` path as the user gave it (``models/NAME``, with or without
            ``.keras``); resolved as :func:`resolve_path` does.
        data: The run's dataset (the config's ``data``); ``None`` skips the check.

    Returns:
        The resolved path.

    Raises:
        ConfigError: Naming the path and why (a file in the way, no such place, read-only, a
            model of other data there).
    """
    from hemo.modelfile import model_paths

    path = resolve_path(value)
    keras_path, card_path, _ = model_paths(path)
    if data is not None and keras_path.is_file():
        try:
            trained_on = json.loads(card_path.read_text())["training"]["data"]
        except (OSError, ValueError, KeyError, TypeError):
            trained_on = None
        if trained_on and resolve_path(trained_on) != resolve_path(data):
            raise ConfigError(
                f"{keras_path} already holds a model trained on {trained_on}, and this run "
                f"trains on {data}: give --export another path (or --export '' for none), or "
                "remove that model first",
                source=value,
            )
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hemo-export-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the exported model to {folder}: {exc.strerror or exc}", source=value
        ) from exc
    return path


def input_spec(config: Mapping[str, Any]):
    """The InputSpec of a resolved config (``image_size`` + the ``input`` table)."""
    from hemo.preprocess import InputSpec
    from hemo.windowing import resolve_windows

    values = dict(config["input"])
    windows = values.get("windows", ())
    values["windows"] = windows if isinstance(windows, str) else tuple(windows)
    values["size"] = int(config["image_size"])
    if values.get("mode") == "hu":
        # One channel per HU window (a composite such as "rsna3" counts its windows)
        values["channels"] = len(resolve_windows(values["windows"]))
    return InputSpec.from_dict(values)


def check_input_fits(spec: Any, paths: Sequence[Any]) -> None:
    """Refuse HU input for a dataset of images, before any training starts.

    A model with ``input.mode = "hu"`` reads Hounsfield units, which only DICOM (and NIfTI)
    carry; trained on PNG/JPEG images it would fail on the first batch, deep inside the data
    pipeline. The first files are sniffed (:func:`hemo.images.images_only`).

    Args:
        spec: The run's :class:`~hemo.preprocess.InputSpec`.
        paths: The training files.

    Raises:
        ConfigError: HU input and the sampled files are all images, naming the first one.
    """
    from hemo.images import images_only

    if spec.mode != "hu":
        return
    found = images_only(paths)
    if found is not None:
        first, kind = found
        raise ConfigError(
            f"input.mode = 'hu' reads Hounsfield units, which only DICOM carries, but this "
            f"dataset holds {kind.upper()} images ({first}, and the other files sampled); train "
            "on display grayscale (--input.mode display, or Input 'display grayscale' on the "
            "Training page)"
        )


def default_run_name() -> str:
    """``run-YYYYmmdd-HHMMSS`` in local time."""
    return time.strftime("run-%Y%m%d-%H%M%S")


# Distribution -----------------------------------------------------------------------------------
def make_strategy(name: str):
    """``tf.distribute`` strategy: default, mirrored (one host), multiworker (``TF_CONFIG``)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("strategy multiworker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """True unless ``TF_CONFIG`` names this task a non-chief worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not JSON: {exc}") from exc
    task = tf_config.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    has_chief = "chief" in tf_config.get("cluster", {})
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


# Callbacks --------------------------------------------------------------------------------------
class StopNow(Exception):
    """Raised from a training batch's end when a stop was requested: leaves ``fit`` at once."""


class StopFlag:
    """Set by SIGTERM/SIGINT; the status callback stops training at the end of the batch."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (main thread only)."""
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def take_back(self) -> None:
        """Handle the signals again after a library replaced the handlers.

        ``MultiWorkerMirroredStrategy`` installs TensorFlow's own SIGTERM handler (its preemption
        notifier), under which a signalled worker hangs instead of stopping cleanly.
        """
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put back the previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: stopping at the end of the current batch", self.signal_name)
        # A second signal falls back to the default behaviour (terminate)
        signal.signal(
            signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler
        )


def make_status_callback(
    path: Path, flag: StopFlag, phase: str, epochs: int, best: dict, steps_hint: int = 0
):
    """Keras callback rewriting status.json every STATUS_INTERVAL_S and at each epoch end
    (``steps_hint``: batches per epoch when Keras cannot tell)."""
    import keras

    class StatusCallback(keras.callbacks.Callback):
        """Live status (epoch, step, ETA, best metric) and the clean stop on a signal."""

        def __init__(self) -> None:
            super().__init__()
            self.last_write = 0.0
            self.t0 = 0.0
            self.steps_done = 0
            self.epoch = 0

        def on_train_begin(self, logs=None):
            self.t0 = time.monotonic()
            # No epoch yet: a resumed phase learns its first one from the backup, later
            runs.write_status(path, phase=phase, epochs=epochs, message=f"{phase} started")
            self.last_write = time.monotonic()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            self.steps_done += 1
            if flag.requested:
                # Leave mid-epoch: no history row and no backup for a part of an epoch; the
                # rerun repeats this epoch from the last one completed
                self._write(batch + 1, message="stopping")
                raise StopNow
            if time.monotonic() - self.last_write >= STATUS_INTERVAL_S:
                self._write(batch + 1)

        def on_test_batch_end(self, batch, logs=None):
            # A signal during validation stops after this epoch, not a batch into the next one.
            if flag.requested:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if flag.requested:
                self.model.stop_training = True
            value = (logs or {}).get(MONITOR)
            if value is not None and math.isfinite(value):
                if best["value"] is None or value > best["value"]:
                    best["value"] = float(value)
            steps = self.params.get("steps") or steps_hint
            self._write(steps, message=f"epoch {epoch + 1}/{epochs} done")

        def _write(self, step: int, message: str | None = None) -> None:
            steps = int(self.params.get("steps") or steps_hint)
            elapsed = time.monotonic() - self.t0
            remaining = (epochs - self.epoch - 1) * steps + max(steps - step, 0)
            eta = elapsed / self.steps_done * remaining if self.steps_done else None
            fields = {
                "state": runs.RUNNING,
                "phase": phase,
                "epoch": self.epoch + 1,
                "epochs": epochs,
                "step": step,
                "steps": steps,
                "eta_s": None if eta is None else round(eta, 1),
                "best_metric": MONITOR,
                "best_value": best["value"],
            }
            if message:
                fields["message"] = message
            runs.write_status(path, **fields)
            self.last_write = time.monotonic()

    return StatusCallback()


def any_auc_metric(name: str = "auc"):
    """ROC AUC of the first output (``any``), the metric checkpoints and early stopping watch."""
    import keras

    class AnyAUC(keras.metrics.AUC):
        """keras.metrics.AUC on column 0 of (N, labels) targets and predictions."""

        def update_state(self, y_true, y_pred, sample_weight=None):
            return super().update_state(y_true[:, :1], y_pred[:, :1], sample_weight)

    return AnyAUC(name=name)


# The run ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Phase:
    """One fit call: epochs [start, end), backbone layers to train, learning rate."""

    name: str
    start: int
    end: int
    n_top: int | None
    learning_rate: float


def plan_phases(config: Mapping[str, Any]) -> list[Phase]:
    """Phase 1 (frozen backbone, head only) when head_epochs > 0, then fine-tuning.

    ``fine_tune_layers`` 0 means the whole backbone trains in phase 2 (always so for compact
    from scratch); the fine-tuning LR applies only after a head phase.
    """
    head, total = int(config["head_epochs"]), int(config["epochs"])
    top = int(config["fine_tune_layers"]) or None
    phases = []
    if head > 0:
        phases.append(Phase("head", 0, head, 0, float(config["learning_rate"])))
    if total > head:
        lr = float(config["fine_tune_learning_rate"] if head else config["learning_rate"])
        phases.append(Phase("fine_tune" if head else "train", head, total, top, lr))
    return phases


def select_labels(choice: str, df) -> tuple[str, ...]:
    """Output labels for the ``labels`` option (auto: six RSNA labels when subtypes are known)."""
    from hemo.pipeline import BINARY_LABELS, labels_for

    if choice == "any":
        return BINARY_LABELS
    if choice == "rsna":
        if labels_for(df) != RSNA_LABELS:
            raise DatasetError("labels = rsna needs every subtype column known in the index")
        return RSNA_LABELS
    return labels_for(df)


def train(config: Mapping[str, Any]) -> Path:
    """Run one training from a resolved config (see :func:`resolve_config`).

    Args:
        config: Resolved configuration.

    Returns:
        The run directory (the chief's; a non-chief worker returns its temporary folder).

    Raises:
        TrainingError: The run already finished, or training failed.
        ConfigError, DatasetError, ModelError: Bad options, data or weights.
    """
    name = runs.check_run_name(config.get("name") or default_run_name())
    config = {**config, "name": name}
    chief = is_chief()
    # Where this process writes: the run folder (chief) or a throwaway folder (other workers)
    path = runs.run_dir(name) if chief else Path(tempfile.mkdtemp(prefix=f"hemo-{name}-worker-"))
    if chief and path.exists():
        if not path.is_dir():
            raise TrainingError(f"{path} is a file, not a run folder; choose another --name")
        current = runs.read_run(name)
        refusal = runs.occupied(current)
        # the process a page launched finds its own pid in the status: that is no other run
        if refusal and not (
            current.state == runs.RUNNING and current.status.get("pid") == os.getpid()
        ):
            if current.state != runs.RUNNING or runs.is_training_process(current.status.get("pid")):
                raise TrainingError(refusal.replace("choose another name", "choose another --name"))
    previous = runs.read_json(path / runs.STATUS_FILE) or {}
    if previous.get("state") == runs.FINISHED:
        raise TrainingError(f"run {name!r} already finished in {path}; choose another --name")
    differ = runs.resume_conflict(path, config)
    if differ:
        state = previous.get("state") or "unfinished"
        raise TrainingError(runs.resume_refusal(name, state, differ, option="--name"))
    data = resolve_path(config["data"])
    if not data.exists():  # said before a run folder is made for it
        from hemo.kaggle import download_hint

        hint = download_hint(data)
        raise DatasetError("no such file or folder" + (f"; {hint}" if hint else ""), source=data)
    check_start(config)
    if chief and config.get("export"):
        # before the run folder and hours of training
        check_export(config["export"], config["data"])
    resuming = (path / runs.BACKUP_DIR).is_dir()
    path.mkdir(parents=True, exist_ok=True)
    runs.write_json_atomic(path / runs.CONFIG_FILE, dict(config))
    runs.write_status(
        path,
        name=name,
        state=runs.RUNNING,
        pid=os.getpid(),
        started=previous.get("started") or time.time(),
        phase="setup",
        message="resuming" if resuming else "loading data",
    )
    flag = StopFlag()
    flag.install()
    try:
        with runs.Heartbeat(path):
            state, message = _run(config, path, chief, flag)
    except BaseException as exc:
        runs.write_status(path, state=runs.FAILED, message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        flag.restore()
    # A stop asked for after the last epoch (while the model was saved and evaluated) finds
    # nothing left to stop: the run finishes, and the stop goes to the caller, so hemo crossval
    # does not start its next fold as if nobody had asked
    late = flag.requested and state == runs.FINISHED
    if late:
        message = f"{message} ({flag.signal_name} arrived after the last epoch)"
    runs.write_status(
        path, state=state, message=message, eta_s=0 if state == runs.FINISHED else None
    )
    if not chief:
        shutil.rmtree(path, ignore_errors=True)
    if late:
        log.warning("%s arrived after the last epoch: run %s finished; stopping here",
                    flag.signal_name, path.name)  # fmt: skip
        raise KeyboardInterrupt
    return path


@dataclasses.dataclass
class _Data:
    """What a run trains and validates on, resolved from its config (no image read yet)."""

    data: Path
    index: Any
    train_df: Any
    val_df: Any
    extra: Any
    labels: tuple[str, ...]
    spec: Any
    batch: int
    cache: bool
    weights: dict[int, float] | None
    row_weights: Any
    augment: Any


def _training_data(config: Mapping[str, Any]) -> _Data:
    """The index, its splits (plus ``extra_train`` rows), labels, input and sample weights."""
    from hemo.datasets import load_index
    from hemo.pipeline import Augment, class_weights, decide_cache, forget_left_out

    data = resolve_path(config["data"])
    index = load_index(data)
    forget_left_out()  # this run's record of unreadable images starts empty
    train_df, val_df = _split(index, "train", data), _split(index, "val", data)
    labels = select_labels(config["labels"], index)
    extra = extra_train_rows(config, labels)
    if extra is not None:
        import pandas as pd

        log.info("adding %d training images from %s", len(extra), config["extra_train"])
        train_df = pd.concat([train_df, extra], ignore_index=True)
    spec = input_spec(config)
    check_input_fits(spec, train_df["path"])
    # Both sets are cached, so both count (checked before any image is read)
    cache = decide_cache(
        len(train_df) + len(val_df),
        spec,
        None if config["cache"] == "auto" else bool(config["cache"]),
    )
    row_weights = None
    if config["lookalike_weights"]:
        from hemo.lookalike import group_weights

        patients = train_df["patient_id"] if "patient_id" in train_df else None
        row_weights = group_weights(train_df["path"].astype(str).tolist(), patients)
        log.info(
            "lookalike_weights: sample weights from %.2f to %.2f over %d training images",
            float(row_weights.min()),
            float(row_weights.max()),
            len(row_weights),
        )
    augment = Augment(
        strength=float(config["augment"]["strength"]),
        seed=int(config["seed"]),
        mixup=float(config["augment"]["mixup"]),
        gamma=float(config["augment"]["gamma"]),
        blur=float(config["augment"]["blur"]),
        lesion=float(config["augment"]["lesion"]),
        jitter_maps=config["augment"]["jitter_maps"],
    )
    return _Data(
        data=data,
        index=index,
        train_df=train_df,
        val_df=val_df,
        extra=extra,
        labels=labels,
        spec=spec,
        batch=int(config["batch_size"]),
        cache=cache,
        weights=class_weights(train_df) if config["class_weights"] else None,
        row_weights=row_weights,
        augment=augment,
    )


def _datasets(d: _Data, seed: int, mask_grid: int | None = None):
    """The training (shuffled, augmented) and validation tf.data datasets of ``d``; with
    ``mask_grid`` they also yield each image's lesion mask on that grid."""
    from hemo.pipeline import make_dataset

    grid = {} if mask_grid is None else {"mask_grid": mask_grid}
    train_ds = make_dataset(
        d.train_df, d.spec, d.labels, d.batch, True, d.augment, seed, cache=d.cache,
        weights=d.weights, row_weights=d.row_weights, **grid,
    )  # fmt: skip
    val_ds = make_dataset(d.val_df, d.spec, d.labels, d.batch, False, cache=d.cache, **grid)
    return train_ds, val_ds


def _build(config: Mapping[str, Any], d: _Data, **kwargs: Any):
    """The config's network for ``d``'s input and labels (``kwargs``: e.g. ``weights``)."""
    from hemo.model import build_model

    return build_model(
        config["architecture"],
        d.spec,
        d.labels,
        dropout=float(config["dropout"]),
        alpha=float(config["alpha"]),
        pool=str(config["head_pool"]),
        **kwargs,
    )


def _init_weights(config: Mapping[str, Any], model) -> dict[str, Any] | None:
    """Copy ``init``'s weights into ``model`` (and anchor them for L2-SP); what was copied."""
    from hemo.model import anchor_weights, init_from_model

    if not config["init"]:
        return None
    names: list[str] = []
    copied, total = init_from_model(model, resolve_path(config["init"]), names)
    report = {"from": str(config["init"]), "layers_copied": copied, "layers": total}
    if config["l2sp"]:
        # L2-SP: the copied weights are pulled back towards the init model's
        anchored = anchor_weights(model, float(config["l2sp"]), names)
        report |= {"l2sp": float(config["l2sp"]), "variables_anchored": anchored}
    return report


def _run(config: Mapping[str, Any], path: Path, chief: bool, flag: StopFlag) -> tuple[str, str]:
    """Data, model, phases, final model and report; returns (final state, message)."""
    import keras

    from hemo.model import set_trainable_top

    seed = int(config["seed"])
    keras.utils.set_random_seed(seed)
    strategy = make_strategy(config["strategy"])
    distributed = config["strategy"] == "multiworker"
    if distributed:
        flag.take_back()
    d = _training_data(config)
    mask_weight = float(config["mask_loss"])
    if mask_weight:
        _check_masks(d.train_df, d.data)
    else:
        train_ds, val_ds = _datasets(d, seed)
    steps = int(config["steps_per_epoch"]) or None
    val_steps = None
    if distributed and not mask_weight:
        # Workers must agree on the number of steps: repeat and count
        steps = steps or max(1, len(d.train_df) // d.batch)
        val_steps = max(1, math.ceil(len(d.val_df) / d.batch))
        train_ds, val_ds = train_ds.repeat(), val_ds.repeat()
    log.info(
        "run %s: %d train / %d val images, labels %s, input %s",
        config["name"],
        len(d.train_df),
        len(d.val_df),
        list(d.labels),
        d.spec,
    )
    # Model in the strategy's scope, initial weights
    with strategy.scope():
        model = _build(config, d, weights=config["weights"])
    _check_cam_layer(model, config["cam_layer"])
    # What fit trains: the model, or (mask_loss) a view of it that also outputs a lesion map
    fit_model = model
    if mask_weight:
        from hemo.model import with_mask_head

        with strategy.scope():
            fit_model, grid = with_mask_head(model, config["cam_layer"] or None)
        train_ds, val_ds = _datasets(d, seed, mask_grid=grid)
        log.info(
            "mask_loss %g: lesion masks on the %d x %d grid of the CAM layer",
            mask_weight,
            grid,
            grid,
        )
    if config["sam"]:
        with strategy.scope():
            fit_model = sharpness_aware(fit_model, float(config["sam"]))
        log.info("sam %g: each step's gradient is taken at the worst nearby weights", config["sam"])
    init_report = _init_weights(config, model)
    # Phases: head only, then fine-tuning; each resumable from its backup
    best = {"value": _best_so_far(path)}
    verbose = 1 if sys.stderr.isatty() else 2
    note = None  # why training ended before its last epoch
    for phase in plan_phases(config):
        note = None
        set_trainable_top(model, phase.n_top)
        if distributed:
            # Keras 3's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585)
            stopped = _fit_multiworker(
                model, config, phase, strategy, train_ds, val_ds, steps, val_steps, path, chief,
                flag, best, verbose,
            )  # fmt: skip
            if stopped:
                by = flag.signal_name or "a signal on another worker"
                return runs.STOPPED, f"stopped by {by} during {phase.name}"
            continue
        epoch_steps = steps or _cardinality(train_ds, len(d.train_df), d.batch)
        with strategy.scope():
            _compile(
                fit_model, config, phase, epoch_steps,
                mask_labels=len(d.labels) if mask_weight else 0,
            )  # fmt: skip
        callbacks = _callbacks(config, path, phase, flag, best, chief, steps_hint=epoch_steps)
        fit_model._initial_epoch = None  # a previous phase's restore must not leak into this one
        try:
            fit_model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=phase.end,
                initial_epoch=phase.start,
                steps_per_epoch=steps,
                validation_steps=val_steps,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the dataset shuffles, seeded
            )
        except StopNow:
            pass
        if flag.requested:
            return runs.STOPPED, f"stopped by {flag.signal_name} during {phase.name}"
        early = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
        if early.stopped_epoch:
            note = (
                f"early stopping after epoch {early.stopped_epoch + 1} of {phase.end} "
                f"({MONITOR} had not improved for {early.patience} epoch(s))"
            )
            log.info("%s", note)
    if not chief:
        return runs.FINISHED, "worker done"
    final = _final_model(config, path, d, model, fit_model)
    runs.write_status(path, phase="evaluate", message="choosing threshold, evaluating")
    _finish(config, path, final, d.index, d.data, d.labels, d.spec, init_report)
    shutil.rmtree(path / runs.BACKUP_DIR, ignore_errors=True)
    skipped = _left_out(d.index, d.extra)
    if skipped["count"]:
        left = f"{skipped['count']} unreadable image(s) left out: {', '.join(skipped['files'])}"
        note = left if note is None else f"{note}; {left}"
    return runs.FINISHED, "finished" if note is None else f"finished: {note}"


def _final_model(config: Mapping[str, Any], path: Path, d: _Data, model, fit_model):
    """A clean copy of the trained network (no mask head, SAM or EMA wrapper), with the best
    checkpoint's weights when ``checkpoint = "best"`` and one was written, else the last."""
    final = _build(config, d)
    final.set_weights(model.get_weights())
    best_file = path / runs.CHECKPOINT_DIR / runs.BEST_CHECKPOINT
    if best_file.is_file() and config["checkpoint"] == "best":
        fit_model.load_weights(best_file)
        final.set_weights(model.get_weights())
    return final


#: Names of left-out files recorded in a card (the count is always whole).
LEFT_OUT_NAMES = 10


def _left_out(index, extra) -> dict[str, Any]:
    """Files left out of this run because they could not be read: training and validation
    files the pipeline met, and labelled files the index itself could not read (in no split);
    count and the first :data:`LEFT_OUT_NAMES` file names (names only: a folder path may name
    a patient). Test rows are not fed to training, so the pipeline never meets them."""
    import pandas as pd

    from hemo.datasets.index import unreadable_at_indexing
    from hemo.pipeline import left_out

    fed = index[index["split"].isin(["train", "val"])]
    rows = fed if extra is None else pd.concat([fed, extra], ignore_index=True)
    found = set(left_out(rows["path"].astype(str))) | set(unreadable_at_indexing(index))
    names = [Path(p).name for p in sorted(found)[:LEFT_OUT_NAMES]]
    return {"count": len(found), "files": names}


def extra_train_rows(config: Mapping[str, Any], labels: Sequence[str]):
    """Rows of the ``extra_train`` dataset added to the training split, or None.

    Only training ever sees them: validation, the threshold and every metric stay on the main
    data, so a cross-validation fold's held-out images are untouched. The extra dataset's
    ``train`` split is used when it has one (all rows otherwise); ``extra_train_rows`` > 0 draws
    that many of them (seeded by ``seed``).

    Raises:
        DatasetError: The extra dataset cannot be read, is empty or lacks a label column.
    """
    from hemo.datasets import load_index
    from hemo.pipeline import LABEL_COLUMNS

    if not config["extra_train"]:
        return None
    source = resolve_path(config["extra_train"])
    rows = load_index(source)
    if "split" in rows.columns and (rows["split"] == "train").any():
        rows = rows[rows["split"] == "train"]
    missing = [name for name in labels if LABEL_COLUMNS[name] not in rows.columns]
    if rows.empty or missing:
        what = "no rows" if rows.empty else f"no label column for {missing}"
        raise DatasetError(f"extra_train {source}: {what}")
    wanted = int(config["extra_train_rows"])
    if 0 < wanted < len(rows):
        rows = rows.sample(n=wanted, random_state=int(config["seed"]))
    return rows.reset_index(drop=True).assign(split="train")


def _check_masks(train_df, data: Path) -> None:
    """Refuse ``mask_loss`` on training rows without a single lesion mask."""
    if "mask_path" not in train_df.columns or not train_df["mask_path"].notna().any():
        raise DatasetError(
            "mask_loss needs lesion masks (an index column mask_path, as hemo demo-data "
            "writes for its phantoms); none of the training rows has one",
            source=data,
        )


def _split(index, split: str, data: Path | None = None):
    """Rows of one split, refusing an empty one (naming ``data``, and why when the images
    come from too few patients to split)."""
    if "split" not in index.columns:
        raise DatasetError("the index has no 'split' column; build it with hemo index", data)
    rows = index[index["split"] == split].reset_index(drop=True)
    if rows.empty:
        why = f"the index has no {split!r} rows (splits: {index['split'].value_counts().to_dict()})"
        patients = _patients_per_label(index)
        if patients:
            from hemo.datasets.split import MIN_GROUPS_FOR_ALL_SPLITS

            counts = ", ".join(f"{n} {label}" for label, n in patients.items())
            why += (
                f": its {len(index):,} images come from {sum(patients.values())} patient(s) "
                f"({counts}); hemo index deals "
                "whole patients to train, val and test label by label, and a label needs "
                f"{MIN_GROUPS_FOR_ALL_SPLITS} or more patients to give val and test one each"
            )
        raise DatasetError(why, data)
    return rows


def _patients_per_label(index) -> dict[str, int]:
    """Patients with a bleed and without (a patient counts as positive when any image is);
    empty when the index has no patient ids."""
    if "patient_id" not in index.columns or not index["patient_id"].notna().any():
        return {}
    import pandas as pd

    label = pd.to_numeric(index.get("label_any"), errors="coerce")
    per_patient = label.groupby(index["patient_id"]).max()
    return {
        "with a bleed": int((per_patient == 1).sum()),
        "without": int((per_patient == 0).sum()),
    }


def _cardinality(ds, rows: int, batch: int) -> int:
    """Batches per epoch of a finite dataset; when tf.data cannot tell (unreadable images are
    filtered out as they are met), the batches ``rows`` make (at least 1)."""
    n = int(ds.cardinality())
    return n if n > 0 else max(1, math.ceil(rows / batch))


def _best_so_far(path: Path) -> float | None:
    """Best monitored value in history.csv (resumed runs keep their best checkpoint)."""
    history = runs.read_history(path)
    if MONITOR not in history.columns or history[MONITOR].dropna().empty:
        return None
    return float(history[MONITOR].max())


def _compile(
    model, config: Mapping[str, Any], phase: Phase, steps: int, mask_labels: int = 0
) -> None:
    """Adam (cosine or constant LR), BCE, AUC of ``any`` and accuracy; with ``mask_labels``
    (the number of labels of a :func:`hemo.model.with_mask_head` view) the loss adds the mask
    term and accuracy counts the labels only.

    The metrics are weighted by the sample weights: an unreadable image (weight 0) counts in
    none, in training and validation alike (the multi-worker loop weighs them the same way).
    Class weights are constant within a class, so the AUC is the unweighted one; training
    accuracy is the class-balanced one, validation accuracy the plain one."""
    import keras

    accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    loss = _loss(config)
    if mask_labels:
        accuracy = labels_accuracy_metric(mask_labels)
        loss = labels_and_mask_loss(
            mask_labels, float(config["mask_loss"]), float(config["label_smoothing"])
        )
    model.compile(
        optimizer=_optimizer(config, phase, steps),
        loss=loss,
        weighted_metrics=[any_auc_metric(), accuracy],
    )


def sharpness_aware(model, rho: float):
    """``model`` trained with sharpness-aware minimisation (SAM, Foret et al. 2021).

    Each step first takes the loss's gradient g at the weights w, moves them to the worst point
    nearby to first order, w + rho * g / ||g||, takes the gradient there and applies that one at
    w with the optimizer: training prefers weights whose whole neighbourhood has a low loss (a
    flat minimum), which tends to generalise better from few images. Twice the compute of a
    plain step. The returned model shares every layer and weight with ``model`` and only
    replaces Keras fit's training step (TensorFlow backend); metrics and the reported loss are
    those of the first pass, as in a plain step.

    Args:
        model: The Keras model to train (a plain model or a :func:`hemo.model.with_mask_head`
            view).
        rho: Radius of the perturbation, > 0 (0.05 in the paper).

    Returns:
        A ``keras.Model`` whose ``fit`` trains ``model``'s weights with SAM.
    """
    import keras
    import tensorflow as tf

    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")

    class SharpnessAware(keras.Model):
        """A wrapper whose training step is SAM's two passes."""

        def __init__(self, inner: keras.Model, radius: float) -> None:
            super().__init__(name=f"{inner.name}_sam")
            self.inner = inner
            self.radius = radius
            self.built = inner.built  # a functional model is: BackupAndRestore needs it

        def call(self, x, training=False):
            return self.inner(x, training=training)

        def _loss_at(self, x, y, sample_weight):
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
                scaled = self.optimizer.scale_loss(loss)
            return y_pred, loss, tape.gradient(scaled, self.trainable_weights)

        def train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            weights = self.trainable_weights
            y_pred, loss, grads = self._loss_at(x, y, sample_weight)
            # Keras fit reports "loss" from this tracker (as its own train_step does)
            self._loss_tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
            norm = tf.linalg.global_norm([g for g in grads if g is not None])
            scale = self.radius / (norm + 1e-12)
            steps = [
                None if g is None else tf.cast(g, w.dtype) * scale
                for g, w in zip(grads, weights, strict=True)
            ]
            for w, e in zip(weights, steps, strict=True):
                if e is not None:
                    w.assign_add(e)
            _, _, sharp_grads = self._loss_at(x, y, sample_weight)
            for w, e in zip(weights, steps, strict=True):
                if e is not None:
                    w.assign_sub(e)
            self.optimizer.apply_gradients(zip(sharp_grads, weights, strict=True))
            return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    return SharpnessAware(model, rho)


def labels_and_mask_loss(n_labels: int, weight: float, label_smoothing: float = 0.0):
    """Loss of a mask-supervised batch (targets from :func:`hemo.pipeline.mask_targets`).

    Per image: the labels' BCE (smoothed) plus ``weight`` x the mean BCE over the grid cells
    between the lesion map and the mask's lesion fractions, for images that have a mask.
    """
    import keras

    class LabelsAndMaskLoss(keras.losses.Loss):
        """BCE of the labels + weight x mask BCE, on ``[labels | has_mask | grid]`` targets."""

        def call(self, y_true, y_pred):
            ops = keras.ops
            y_true = ops.cast(y_true, y_pred.dtype)
            labels = keras.losses.binary_crossentropy(
                y_true[:, :n_labels], y_pred[:, :n_labels], label_smoothing=label_smoothing
            )
            lesion = keras.losses.binary_crossentropy(
                y_true[:, n_labels + 1 :], y_pred[:, n_labels:]
            )
            return labels + weight * y_true[:, n_labels] * lesion

    return LabelsAndMaskLoss(name="labels_and_mask")


def labels_accuracy_metric(n_labels: int):
    """Binary accuracy of the first ``n_labels`` columns (the labels, not the lesion map)."""
    import keras

    class LabelsAccuracy(keras.metrics.BinaryAccuracy):
        """keras.metrics.BinaryAccuracy on the label columns of mask-supervised targets."""

        def update_state(self, y_true, y_pred, sample_weight=None):
            return super().update_state(y_true[:, :n_labels], y_pred[:, :n_labels], sample_weight)

    return LabelsAccuracy(name="accuracy")


def _optimizer(config: Mapping[str, Any], phase: Phase, steps: int):
    """Adam at the phase's LR, cosine-decayed over the phase's steps or constant; with ``ema``
    > 0 it keeps an exponential moving average of the weights (that momentum per step), which
    Keras fit swaps into the model when the phase ends."""
    import keras

    lr: Any = phase.learning_rate
    if config["lr_schedule"] == "cosine":
        decay = max(1, (phase.end - phase.start) * steps)
        lr = keras.optimizers.schedules.CosineDecay(phase.learning_rate, decay)
    ema = float(config["ema"])
    if ema:
        return keras.optimizers.Adam(learning_rate=lr, use_ema=True, ema_momentum=ema)
    return keras.optimizers.Adam(learning_rate=lr)


def _loss(config: Mapping[str, Any], reduction: str | None = "sum_over_batch_size"):
    """Binary cross-entropy with the configured label smoothing (``reduction=None``: per image)."""
    import keras

    return keras.losses.BinaryCrossentropy(
        label_smoothing=float(config["label_smoothing"]), reduction=reduction
    )


def best_checkpoint(target: Path, initial_value: float | None):
    """Keras ``ModelCheckpoint`` of the best epoch by :data:`MONITOR`, replaced atomically.

    Keras writes the weights in place; a kill during that write would leave the run's only
    best checkpoint unreadable, and a resumed run that never beats that epoch would then fail
    at its final load. Here Keras writes to a temporary file beside ``target``, which is moved
    over ``target`` once complete, so ``target`` is always a whole checkpoint.
    """
    import keras

    partial = target.with_name(f"{PARTIAL_PREFIX}{target.name}")

    class _AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if partial.is_file():
                os.replace(partial, target)

    partial.unlink(missing_ok=True)  # a torn write of a killed run
    return _AtomicCheckpoint(
        str(partial),
        monitor=MONITOR,
        mode="max",
        save_best_only=True,
        save_weights_only=True,
        initial_value_threshold=initial_value,
    )


def _callbacks(
    config,
    path: Path,
    phase: Phase,
    flag: StopFlag,
    best: dict,
    chief: bool,
    backup: bool = True,
    steps_hint: int = 0,
) -> list:
    """CSV log, backup (unless ``backup`` is false), best checkpoint, early stopping, LR
    schedule, live status."""
    import keras

    (path / runs.CHECKPOINT_DIR).mkdir(exist_ok=True)
    callbacks = [
        # History first, then the backup: a kill in between repeats a row (read_history dedups)
        keras.callbacks.CSVLogger(str(path / runs.HISTORY_FILE), append=True),
    ]
    if backup:
        # double_checkpoint: a kill while the weights are being overwritten leaves them
        # unreadable; the rerun then restores the previous epoch's copy instead of failing
        callbacks.append(
            keras.callbacks.BackupAndRestore(
                str(path / runs.BACKUP_DIR / phase.name),
                delete_checkpoint=False,
                double_checkpoint=True,
            )
        )
    callbacks += [
        best_checkpoint(path / runs.CHECKPOINT_DIR / runs.BEST_CHECKPOINT, best["value"]),
        keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="max", patience=int(config["early_stopping_patience"])
        ),
    ]
    if config["lr_schedule"] == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=MONITOR,
                mode="max",
                factor=PLATEAU_FACTOR,
                patience=max(2, int(config["early_stopping_patience"]) // 3),
                min_lr=MIN_LEARNING_RATE,
            )
        )
    callbacks.append(
        make_status_callback(path, flag, phase.name, int(config["epochs"]), best, steps_hint)
    )
    return callbacks


def _fit_multiworker(
    model, config, phase: Phase, strategy, train_ds, val_ds, steps: int, val_steps: int,
    path: Path, chief: bool, flag: StopFlag, best: dict, verbose: int,
) -> bool:  # fmt: skip
    """One phase under ``MultiWorkerMirroredStrategy`` with hemo's own training loop.

    Keras 3's ``fit`` cannot run under that strategy (keras-team/keras#20585), so this loop does
    what ``fit`` does for the other strategies: the dataset is distributed over the workers, a
    ``tf.function`` step runs the model under ``strategy.run`` with a GradientTape (the same
    smoothed BCE and the dataset's class-derived sample weights, averaged over the global batch),
    and each epoch ends with a validation pass and the same Keras callbacks as :func:`_callbacks`
    (history.csv, best checkpoint, early stopping, LR plateau, status.json), minus
    ``BackupAndRestore``: the workers could not agree on where a resumed run starts.

    Every worker runs the same epochs and steps; stop decisions (a signal on any worker, early
    stopping) are all-reduced so that no worker waits on a collective the others left. A non-chief
    worker's ``path`` is its temporary folder, so only the chief writes the run's files.

    Args:
        model: The model, built in ``strategy.scope()``, with this phase's trainable layers.
        config: Resolved configuration.
        phase: Epochs and learning rate of this phase.
        strategy: The ``MultiWorkerMirroredStrategy``.
        train_ds: Repeated training dataset of global batches ``(x, y, w)``.
        val_ds: Repeated validation dataset ``(x, y, w)``.
        steps: Training steps per epoch (the same on every worker).
        val_steps: Validation batches per epoch.
        path: This process's run folder (the chief's) or temporary folder (other workers).
        chief: Whether this process is the chief.
        flag: The local stop flag (SIGTERM/SIGINT).
        best: ``{"value": best val AUC so far}``, updated.
        verbose: Keras progress bar mode.

    Returns:
        True when a signal on any worker stopped the phase.
    """
    import keras
    import tensorflow as tf

    global_batch = int(config["batch_size"])
    with strategy.scope():
        # Optimizer variables mirrored like the model's; compiled so callbacks can reach the LR
        _compile(model, config, phase, steps)
        model.optimizer.build(model.trainable_variables)
        per_image_loss = _loss(config, reduction=None)
    optimizer = model.optimizer
    # Validation metrics live outside the strategy: each worker scores the whole val set alike
    val_metrics = [
        keras.metrics.Mean(name="loss"),
        any_auc_metric(),
        keras.metrics.BinaryAccuracy(name="accuracy"),
    ]

    def replica_step(x, y, w):
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = tf.nn.compute_average_loss(
                per_image_loss(y, probs) * w, global_batch_size=global_batch
            )
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(iterator, stop):
        loss = strategy.run(replica_step, args=next(iterator))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            _sum_over_workers(strategy, stop),
        )

    @tf.function
    def agree(stop):
        return _sum_over_workers(strategy, stop)

    @tf.function
    def predict(x):
        return model(x, training=False)

    callbacks = _callbacks(config, path, phase, flag, best, chief, backup=False)
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_progbar=verbose != 0, model=model, verbose=verbose,
        epochs=phase.end, steps=steps,
    )  # fmt: skip
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(phase.start, phase.end):
        callback_list.on_epoch_begin(epoch)
        total = 0.0
        signalled = False
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            loss, stop = train_step(iterator, tf.constant([float(flag.requested), 0.0]))
            total += float(loss)
            signalled = bool(stop[0] > 0)
            callback_list.on_train_batch_end(step, {"loss": total / (step + 1)})
            if signalled:
                break
        logs = {"loss": total / max(1, step + 1)}
        if not signalled:  # a signal skips validation, as it stops as soon as it can
            logs.update(_validate_epoch(predict, val_ds, val_steps, per_image_loss, val_metrics))
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        callback_list.on_epoch_end(epoch, logs)
        # Any worker's signal or early stopping stops them all, after the same epoch
        wants = [float(flag.requested or signalled), float(model.stop_training)]
        stop = agree(tf.constant(wants))
        if stop[0] > 0 or stop[1] > 0:
            signalled = bool(stop[0] > 0)
            break
    callback_list.on_train_end()
    return signalled


def _sum_over_workers(strategy, values):
    """Element-wise sum of a small float vector over every replica (flags: > 0 if any is set)."""
    import tensorflow as tf

    per_replica = strategy.run(lambda v: tf.identity(v), args=(values,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)


def _validate_epoch(predict, val_ds, val_steps: int, loss_fn, metrics: list) -> dict:
    """Validation logs (``val_loss``, ``val_auc``, ``val_accuracy``) over ``val_steps`` batches.

    Args:
        predict: Batch of inputs -> probabilities.
        val_ds: Validation dataset of ``(x, y, w)`` batches (``w`` 0 for an unreadable image,
            which no metric counts).
        val_steps: Batches to score.
        loss_fn: Per-image loss ``(y, probs) -> (N,)``.
        metrics: A ``keras.metrics.Mean`` named ``loss`` (fed the per-image losses), then metrics
            of ``(y, probs)``.

    Returns:
        ``{"val_<metric name>": value}``.
    """
    loss_metric, *others = metrics
    for metric in metrics:
        metric.reset_state()
    for x, y, w in val_ds.take(val_steps):
        probs = predict(x)
        loss_metric.update_state(loss_fn(y, probs), sample_weight=w)
        for metric in others:
            metric.update_state(y, probs, sample_weight=w)
    return {f"val_{m.name}": float(m.result()) for m in metrics}


def _finish(config, path: Path, model, index, data: Path, labels, spec, init_report) -> None:
    """Threshold on val, card, model files, evaluation report (chief only)."""
    from hemo.model import CAM_LAYERS, ModelCard, save_model

    threshold, referral = _val_threshold(model, index, labels, spec, config)
    history = runs.read_history(path)
    card = ModelCard(
        name=config["name"],
        architecture=config["architecture"],
        input_spec=spec,
        labels=tuple(labels),
        threshold=threshold,
        cam_layer=config["cam_layer"] or CAM_LAYERS[config["architecture"]],
        metrics={},
        training=_training_summary(config, index, data, history, init_report),
        slice_range=training_slice_range(config, _split(index, "train")),
        referral=referral,
    )
    report = _evaluate(model, card, index)
    metrics = {
        "test": report.get("summary") or report.get("test") or report,
        "measured_on": {
            "data": portable_path(data, config["data"]),
            "split": "test",
            "seed": int(config["seed"]),
        },
        "threshold_from": f"val ({config['threshold']['method']})",
    }
    card = dataclasses.replace(card, metrics=metrics)
    save_model(model, path / runs.MODEL_FILE, card, h5=bool(config["save_h5"]))
    runs.write_json_atomic(path / runs.REPORT_FILE, {"threshold": threshold, **report})
    if config["export"]:
        exported = save_model(
            model, resolve_path(config["export"]), card, h5=bool(config["save_h5"])
        )
        log.info("exported the model to %s", exported)


def training_slice_range(config: Mapping[str, Any], rows) -> dict[str, Any] | None:
    """:func:`hemo.anatomy.fit_slice_range` of the training rows and ``extra_train``'s, for
    the card (``None`` when no image could be measured)."""
    import pandas as pd

    from hemo.anatomy import fit_slice_range

    extra = extra_train_rows(config, ("any",)) if config["extra_train"] else None
    paths = pd.concat([rows["path"], extra["path"]]) if extra is not None else rows["path"]
    fitted = fit_slice_range(paths.drop_duplicates().tolist())
    if fitted is None:
        log.warning("no training image could be measured: the card gets no slice range")
        return None
    return fitted.to_dict()


def _layout(index, data: Path) -> str | None:
    """The training set's layout: recorded in its index, else detected from its folder."""
    from hemo.datasets import detect_layout

    recorded = (index.attrs.get("hemo") or {}).get("layout")
    if recorded:
        return str(recorded)
    try:
        return detect_layout(data if data.is_dir() else data.parent)
    except HemoError:
        return None


def _training_summary(config, index, data: Path, history, init_report) -> dict[str, Any]:
    """Data, seed, epochs and options recorded in the card."""
    counts = index["split"].value_counts().to_dict()
    positives = index.groupby("split")["label_any"].sum().astype(int).to_dict()
    extra = extra_train_rows(config, ("any",)) if config["extra_train"] else None
    return {
        "run": config["name"],
        "data": portable_path(data, config["data"]),
        # the dataset's layout (e.g. "phantom": synthetic, so the app warns on real scans)
        "layout": _layout(index, data),
        "images": {k: int(v) for k, v in counts.items()},
        "positives_any": {k: int(v) for k, v in positives.items()},
        "extra_train": None
        if extra is None
        else {
            "data": portable_path(resolve_path(config["extra_train"]), config["extra_train"]),
            "images": len(extra),
            "positives_any": int(extra["label_any"].sum()),
        },
        "seed": int(config["seed"]),
        "epochs_run": len(history),
        "weights": config["weights"],
        "init": init_report,
        "augment_strength": float(config["augment"]["strength"]),
        "mixup": float(config["augment"]["mixup"]),
        "gamma": float(config["augment"]["gamma"]),
        "blur": float(config["augment"]["blur"]),
        "lesion": float(config["augment"]["lesion"]),
        "notes": config["notes"],
        "left_out": _left_out(index, extra),
        "config": {**config, "data": portable_path(data, config["data"])},
    }


def _val_threshold(model, index, labels, spec, config) -> tuple[float, dict[str, Any] | None]:
    """Operating threshold on P(any) and its referral band, both chosen on the validation
    split only (the band ``None`` when turned off or out of reach)."""
    import numpy as np

    from hemo.evaluate import choose_threshold
    from hemo.pipeline import make_dataset
    from hemo.referral import choose_band

    val = _split(index, "val")
    # An unreadable image comes with weight 0: left out of the threshold's data
    probs, targets = [], []
    for x, t, w in make_dataset(val, spec, labels, int(config["batch_size"])):
        keep = np.asarray(w) > 0
        probs.append(np.asarray(model(x, training=False))[keep, 0])
        targets.append(np.asarray(t)[keep, 0])
    y, p = np.concatenate(targets), np.concatenate(probs)
    if not len(y):
        log.warning("keeping threshold %.2f: no validation image could be read", ACCURACY_THRESHOLD)
        return ACCURACY_THRESHOLD, None
    method = config["threshold"]["method"]
    target = float(config["threshold"].get("target_sensitivity", 0.9))
    try:
        threshold = float(choose_threshold(y, p, method, target))
    except DatasetError as exc:
        log.warning("keeping threshold %.2f: %s", ACCURACY_THRESHOLD, exc)
        return ACCURACY_THRESHOLD, None
    accuracy = float(config["threshold"]["referral_accuracy"])
    if not accuracy:
        return threshold, None
    try:
        band = choose_band(y, p, threshold, accuracy, f"val split ({len(val)} images)")
    except DatasetError as exc:
        log.warning("no referral band: %s", exc)
        return threshold, None
    return threshold, band.to_dict()


def _evaluate(model, card, index) -> dict[str, Any]:
    """Evaluation report on the test split through hemo.evaluate (the one prediction path)."""
    from hemo.evaluate import evaluate_model

    try:
        report = evaluate_model(model, card, index, split="test")
    except HemoError as exc:
        log.warning("no test evaluation: %s", exc)
        return {"error": str(exc)}
    data = report.to_dict()
    data["summary"] = report.summary()
    return data
