"""Cheap checks the configs' ``run`` lists make before any work: yes/no values, files, writable folders.

Each raises a :class:`~transfuse_bundle.errors.UserInputError` whose message names the value or path, so a
run stops in one line before a model is built or a file written.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import ConfigValueError, MissingFileError, NotAFolderError, NotWritableError

__all__ = ["flag", "require_file", "require_writable_dir", "CONFIG_CHECKS", "check_config", "check_ids", "check_values"]

ID_SEP = "#"  # MONAI's id separator (monai.bundle.utils.ID_SEP_KEY), without importing MONAI here

def flag(value: bool | str | int, name: str = "option") -> bool:
    """A yes/no config value as a bool. ``monai.bundle run --name false`` passes the *string* ``"false"``
    (python-fire reads only ``True``/``False`` as booleans), which plain ``bool()`` would take for true;
    ``true/false/yes/no/1/0`` in any case are read as meant, anything else raises ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise ConfigValueError(f"{name} must be true or false, got {value!r}")


def require_file(path: str | os.PathLike, what: str = "file") -> str:
    """Returns ``path`` if it is an existing file, else raises ``MissingFileError`` (a ``FileNotFoundError``)
    naming it and ``what``."""
    if not Path(path).is_file():
        problem = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise MissingFileError(f"{what}: {str(path)!r} {problem}")
    return str(path)


def require_writable_dir(path: str | os.PathLike, what: str = "output folder") -> str:
    """Returns ``path`` if it is a folder this process can write in, or can create (its nearest existing parent
    is such a folder); nothing is created. Raises ``NotADirectoryError`` / ``PermissionError`` naming ``what``
    and the path otherwise, so that a run stops before any work instead of at its first save."""
    target = Path(os.path.abspath(Path(path).expanduser()))
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == target else f"cannot be created: {existing} is a file"
        raise NotAFolderError(f"{what}: {str(path)!r} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # permissions, or a read-only file system (also for root)
        where = "" if existing == target else f" cannot be created: {existing}"
        raise NotWritableError(f"{what}: {str(path)!r}{where} is not writable by this user")
    return str(path)


# ---- the values and ids of a config, checked before any work ------------------------------------------------
#
# ``python -m monai.bundle run --ID VALUE`` (and MONAI Label's overrides) set any id, known or not: a typo such as
# ``--imagesize`` adds a new id nobody reads and the defaults run; a bad value fails late, after the data check,
# in a traceback. :func:`check_config`, the first step of every config's ``run``, checks both at once.


def _integer(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"an integer >= {minimum}"
        return None
    return check


def _number(minimum: float, strict: bool = False, maximum: float | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
              and (value > minimum if strict else value >= minimum) and (maximum is None or value <= maximum))
        if ok:
            return None
        low = f"{'>' if strict else '>='} {minimum:g}"
        return f"a number {low}" + (f" and <= {maximum:g}" if maximum is not None else "")
    return check


def _below_one(value: Any) -> str | None:
    return None if _number(0.0)(value) is None and value < 1 else "a number >= 0 and < 1"


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if isinstance(value, str) and value in options else f"one of {', '.join(map(repr, options))}"
    return check


def _yes_no(value: Any) -> str | None:
    try:
        flag(value)
    except ConfigValueError:
        return "true or false"
    return None


def _image_size(value: Any) -> str | None:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in value)):
        return "[H, W]: two positive integers, multiples of 16 (e.g. [352, 352])"
    from .networks.sizes import SIZE_MULTIPLE, check_image_size, padded_size

    try:
        check_image_size(value, "image_size")  # the one home of the size rule
    except ConfigValueError:
        return f"[H, W] with sides that are multiples of {SIZE_MULTIPLE}: pad or resize to {list(padded_size(value))}"
    return None


def _class_names(value: Any) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) >= 2 and all(isinstance(n, str) and n for n in value)
    return None if ok else "a list of at least 2 non-empty names (background first)"


def _empty_distance(value: Any) -> str | None:
    return None if value == "diagonal" or _number(0.0)(value) is None else "'diagonal' or a number >= 0"


def _variant(value: Any) -> str | None:
    from .networks.variants import VARIANTS

    return _choice(*VARIANTS)(value)


def _device(value: Any) -> str | None:
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        return "a torch device such as 'cpu', 'cuda' or 'cuda:0'"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= (device.index or 0):
            return f"a device this machine has: it has {count} CUDA GPU(s) (use 'cpu', or leave device to its default)"
    elif device.type != "cpu":
        return "'cpu' or a CUDA device ('cuda', 'cuda:N')"
    return None


#: every value the configs expose, with what it must be; :func:`check_config` checks those a run was given.
#: ``{id: check(value) -> what it must be, or None}``
CONFIG_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "image_size": _image_size,
    "variant": _variant,
    "spatial_dims": lambda value: None if value in (2, 3) and not isinstance(value, bool) else "2 or 3",
    "in_channels": _integer(1),
    "out_channels": _integer(1),
    "class_names": _class_names,
    "batch_size": _integer(1),
    "learning_rate": _number(0.0, strict=True),
    "grad_clip_norm": _number(0.0, strict=True),
    "max_epochs": _integer(1),
    "train#trainer#max_epochs": _integer(1),
    "real_data_max_epochs": _integer(1),
    "synthetic_max_epochs": _integer(1),
    "val_interval": _integer(1),
    "checkpoint_interval": _integer(1),
    "keep_model": _choice("last", "best"),
    "num_workers": _integer(0),
    "cache_rate": _number(0.0, maximum=1.0),
    "val_fraction": _below_one,
    "seed": _integer(0),
    "split_seed": _integer(0),
    "device": _device,
    "amp_dtype": _choice("auto", "float32", "bfloat16", "float16"),
    "resume": _yes_no,
    "overwrite": _yes_no,
    "overwrite_weights": _yes_no,
    "pretrained": _yes_no,
    "label_at_original_size": _yes_no,
    "polyp_metrics": _yes_no,
    "num_overlays": _integer(0),
    "nsd_tolerance": _number(0.0),
    "empty_distance": _empty_distance,
    "ddp_timeout_s": _number(0.0, strict=True),
    "sw_overlap": _below_one,
    "sw_batch_size": _integer(1),
    "slices_per_volume": _integer(1),
}


def _literal(parser: Any, id_: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``id_``'s raw value is a literal (a plain reference ``@other`` is followed), ``(False,
    None)`` for an expression: the configs' own expressions are their defaults, and evaluating one could start work
    (``max_epochs`` looks at the dataset, which may be generated)."""
    seen = set()
    value = parser[id_]
    while isinstance(value, str) and value.startswith("@") and value[1:] in parser and value not in seen:
        seen.add(value)
        value = parser[value[1:]]
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        return False, None
    return True, value


def check_values(parser: Any) -> None:
    """Checks every id of :data:`CONFIG_CHECKS` that the config ``parser`` holds with a literal value (a default or
    an override; expressions are the configs' own). Raises :class:`ConfigValueError` naming the first bad one."""
    for id_, check in CONFIG_CHECKS.items():
        if id_ not in parser:
            continue
        literal, value = _literal(parser, id_)
        problem = check(value) if literal else None
        if problem:
            raise ConfigValueError(f"{id_} must be {problem}, got {value!r} (--{id_}); nothing was done")
    amp_literal, amp_dtype = _literal(parser, "amp_dtype") if "amp_dtype" in parser else (False, None)
    if amp_literal and amp_dtype == "float16" and "device" in parser:
        from .devices import resolve_amp_dtype

        try:
            resolve_amp_dtype(amp_dtype, parser.get_parsed_content("device"))
        except ValueError as e:
            raise ConfigValueError(f"{e} (--amp_dtype); nothing was done") from None
    if "pretrained" in parser and _literal(parser, "pretrained")[0] and flag(_literal(parser, "pretrained")[1]):
        _require_imagenet_weights(parser)


def _require_imagenet_weights(parser: Any) -> None:
    """``pretrained`` true: the backbones' ImageNet weights must come from somewhere before any work. timm reads them
    from the Hugging Face hub or its cache; offline and uncached, it retries for about a minute, then fails in a
    traceback. Refuses in one line, naming the local-file way, when the hub is switched off (``HF_HUB_OFFLINE``)
    or cannot be reached in 3 s and a backbone without a local ``cnn_weights`` / ``vit_weights`` file is uncached."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub
    from timm.models import get_pretrained_cfg

    from .networks.variants import VARIANTS

    literal, variant = _literal(parser, "variant") if "variant" in parser else (True, "S")
    if not literal or variant not in VARIANTS:
        return
    wanted = []
    for part, default in (("cnn", VARIANTS[variant].cnn), ("vit", VARIANTS[variant].vit)):
        name = parser.get(f"network_def#{part}_name", default)
        if isinstance(name, str) and not name.startswith(("$", "@")) and parser.get(f"network_def#{part}_weights") is None:
            wanted.append((part, name))
    missing = []
    for part, name in wanted:
        cfg = get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        cached = repo and any(isinstance(huggingface_hub.try_to_load_from_cache(repo, f), str)
                              for f in ("model.safetensors", "pytorch_model.bin"))
        if not cached:
            missing.append((part, name))
    if not missing:
        return
    endpoint = huggingface_hub.constants.ENDPOINT
    if huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        why = "the hub is switched off (HF_HUB_OFFLINE)"
    else:
        url = urlparse(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
            return  # reachable: timm downloads them
        except OSError as e:
            why = f"{endpoint} cannot be reached ({e.strerror or e})"
    names = " and ".join(name for _, name in missing)
    files = " ".join(f"--network_def#{part}_weights FILE" for part, _ in missing)
    raise ConfigValueError(f"pretrained=true needs the ImageNet weights of {names}, which are not in timm's cache, and "
                           f"{why}; nothing was done: pass local state dicts saved once from timm models ({files}; "
                           f"README, The network), or --pretrained false")


def _parent(id_: str) -> str:
    return id_.rpartition(ID_SEP)[0]


def _flat_ids(value: Any, prefix: str = "") -> Iterator[str]:
    """Every id inside ``value`` (``a``, ``a#b``, ``a#0``...), below ``prefix``."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        id_ = f"{prefix}{ID_SEP}{key}" if prefix else str(key)
        yield id_
        yield from _flat_ids(child, id_)


def _file_ids(path: Path) -> set[str]:
    """The ids a config file sets: its keys (an overlay's ``a#b`` with its parents) and everything inside them."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    found: set[str] = set()
    if isinstance(content, dict):
        for key, value in content.items():
            parts = str(key).split(ID_SEP)
            found.update(ID_SEP.join(parts[:i]) for i in range(1, len(parts) + 1))
            found.update(_flat_ids(value, str(key)))
    return found


def _command_line_config_files() -> list[Path]:
    """The files of ``--config_file`` on this process's command line (``python -m monai.bundle run``, torchrun)."""
    import ast

    argv = sys.argv[1:]
    for index, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--config_file=") else (
            argv[index + 1] if arg == "--config_file" and index + 1 < len(argv) else None)
        if value is None:
            continue
        try:
            files = ast.literal_eval(value) if value.strip().startswith(("[", "(")) else value
        except (ValueError, SyntaxError):
            files = value
        return [Path(f) for f in ([files] if isinstance(files, str) else files)]
    return []


def _known_ids(workflow: Any) -> set[str]:
    """The ids the bundle's config files define: every JSON config of the configs folder the run reads from (the
    repository's, with its tasks and options, or a bundle folder's; metadata aside), the files it was given on the
    command line or by :func:`~transfuse_bundle.tools.tasks.config_workflow`, and what MONAI's ``--tracking``
    adds."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    root = Path(workflow.config_root_path) if workflow is not None else Path(__file__).resolve().parents[1] / "configs"
    files = [*root.rglob("*.json"), *_command_line_config_files(), *getattr(workflow, "config_files", ())]
    known = set().union(*(_file_ids(Path(f)) for f in files if Path(f).name != "metadata.json"))
    for settings in DEFAULT_EXP_MGMT_SETTINGS.values():
        known.update(k for k in settings["configs"] if k not in settings["handlers_id"])
    return known


def _target_parameters(target: Any) -> list[str] | None:
    """The keyword arguments a component's ``_target_`` takes, or None when it takes any (``**kwargs``) or cannot
    be told (an expression, a builtin)."""
    import importlib
    import inspect
    import pydoc

    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return None
    from monai.bundle.config_item import ComponentLocator

    obj = None
    modules = ComponentLocator().get_component_module_name(target)
    for module in [modules] if isinstance(modules, str) else (modules or []):
        obj = getattr(importlib.import_module(module), target, None)
        if obj is not None:
            break
    obj = obj if obj is not None else pydoc.locate(target)
    # a class whose __init__ passes **kwargs on to its base (MONAI's DataLoader to torch's) takes the base's too
    inits = [c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__] if isinstance(obj, type) else [obj]
    names: list[str] = []
    for init in inits:
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None  # **kwargs all the way up


#: keys of a component (a dict with ``_target_``) that MONAI reads itself
COMPONENT_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")


def _suggest(name: str, names: Iterable[str]) -> str:
    """``names`` with the closest to ``name`` first (difflib), as one comma-separated string."""
    names = sorted(set(names))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    rest = [n for n in names if n not in close]
    return (f"did you mean {' or '.join(close)}? " if close else "") + f"{'other ' if close else ''}ids: {', '.join(rest)}"


def check_ids(parser: Any, known: set[str]) -> None:
    """Refuses an id of ``parser`` that no config file defines (a typo on the command line: ``--imagesize``,
    ``--max_epoch``) with :class:`ConfigValueError`, naming it and the ids that exist, closest first.

    New ids are fine where they cannot be typos of existing ones: list items (a longer handler list), the content
    of a value that an override replaced by a new dict or list, and the arguments of a component (``_target_``)
    that its class or function takes (``--network_def#cnn_weights FILE``), checked against its signature."""
    ids = [i for i in _flat_ids(parser.get()) if not i.startswith("_meta_")]
    unknown = {i for i in ids if i not in known}
    for id_ in [i for i in ids if i in unknown and _parent(i) not in unknown]:
        parent_id, name = _parent(id_), id_.rpartition(ID_SEP)[2]
        parent = parser[parent_id] if parent_id else parser.get()
        if isinstance(parent, list):
            continue
        if isinstance(parent, dict) and "_target_" in parent:
            takes = _target_parameters(parent["_target_"])
            if takes is None or name in takes or name in COMPONENT_KEYS:
                continue
            raise ConfigValueError(f"unknown config id {id_!r}: {parent['_target_']} ({parent_id}) takes no argument "
                                   f"{name!r}; {_suggest(name, takes)}; nothing was done")
        siblings = [k for k in parent if not str(k).startswith("_meta_")] if isinstance(parent, dict) else []
        where = f" in {parent_id}" if parent_id else ""
        raise ConfigValueError(f"unknown config id {id_!r} (a misspelt --{id_}?), defined by no config file{where}; "
                               f"{_suggest(name, [str(k) for k in siblings if str(k) != name])}; nothing was done")


def _calling_config() -> tuple[Any, Any]:
    """The MONAI ``ConfigParser`` whose expression is calling, and the ``ConfigWorkflow`` running it (or None).

    A config expression gets no handle on its parser; the call stack has it (``ConfigParser.get_parsed_content``,
    ``ConfigWorkflow._run_expr``), whichever way the run was started: ``monai.bundle run``, MONAI Label, the
    tests' workflows."""
    from monai.bundle import ConfigParser, ConfigWorkflow

    parser = workflow = None
    frame = sys._getframe(1)
    while frame is not None and workflow is None:
        owner = frame.f_locals.get("self")
        if parser is None and isinstance(owner, ConfigParser):
            parser = owner
        if isinstance(owner, ConfigWorkflow):
            workflow = owner
        frame = frame.f_back
    return parser, workflow


def check_config() -> bool:
    """The first step of every config's ``run`` (MONAI puts a bundle folder's root on ``sys.path`` only when the run
    starts, so a packaged bundle's ``initialize`` cannot import this package; multi_gpu_train.json checks in its
    ``initialize``, before the process group): the ids (:func:`check_ids`) and the values
    (:func:`check_values`) of the running config, before any work. Returns True."""
    parser, workflow = _calling_config()
    if parser is None:
        raise RuntimeError('check_config() runs inside a MONAI config expression ("@check_config")')
    check_ids(parser, _known_ids(workflow))
    check_values(parser)
    return True
