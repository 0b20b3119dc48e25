"""Reading params.yaml into the typed sections of `harclip.config.schema`, or failing with one
line per bad key.

Every stage loads and validates the *whole* file before doing any work, so a bad key
anywhere fails the first stage `dvc repro` runs, naming the key, the value and what is
accepted. The three training stages share a section: `train` holds what the models have in
common and `train_<method>` what is its own; a key in both takes the model's value (a nested
section, `augment`, merges key by key). Each training stage declares both sections in
dvc.yaml, so editing `train` reruns the three and editing `train_clip` reruns CLIP alone.
"""

from __future__ import annotations

import re
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from pydantic import TypeAdapter, ValidationError

from harclip.config.schema import METHODS, AclipTrainConfig, Params, names_a_file
from harclip.runtime.errors import ConfigError

SHARED = "train"
"""The section every training section is merged over."""
TRAIN_SECTIONS = tuple(f"train_{method}" for method in METHODS)


def file_sections() -> list[str]:
    """The top-level sections a params file holds, in pipeline order."""
    return ["download", "preprocess", SHARED, *TRAIN_SECTIONS, "evaluate", "plot"]


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float, as YAML 1.2 (and DVC's own parser) does."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error naming the file when it is missing or malformed."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the params file ({err.strerror})") from err
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, "
                          f"got {type(data).__name__}")
    return data


NESTED = frozenset(name for name, hint in get_type_hints(AclipTrainConfig).items()
                   if is_dataclass(hint))
"""The training keys that are sections of their own (augment, aclip): they merge key by key."""


def merged(shared: dict, own: dict) -> dict:
    """`own` over `shared`: a key in both takes `own`'s value, whole (`prompt_names: {}`
    clears the shared phrases), but for a nested section, which merges key by key
    (`train_clip: {augment: {flip: false}}` keeps the shared `scale_min`)."""
    out = dict(shared)
    for key, value in own.items():
        nested = key in NESTED and isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if nested else value
    return out


def _where(data: dict, section: str, keys: list[str]) -> str:
    """The dotted key as the file holds it: a training section's key comes from that section
    where it sets it (down to the value: a list's item is the list's), else from the shared
    one."""
    if section in TRAIN_SECTIONS:
        node = data.get(section) or {}
        for key in keys:
            if not isinstance(node, dict):
                break
            if key not in node:
                section = SHARED
                break
            node = node[key]
    return ".".join([section, *keys])


def describe_errors(err: ValidationError, path: Path, data: dict | None = None) -> str:
    """One line per bad key, each named where the file holds it: a shared training key, or a
    check across keys that fails for every model, once, not once per model."""
    lines: list[str] = []
    missing: dict[str, set[str]] = {}
    whole: dict[str, list[str]] = {}  # a check across a section's keys → the sections
    for item in err.errors():
        section, *keys = [str(part) for part in item["loc"]] or ["(top level)"]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            line = f"{path}: unknown key '{_where(data or {}, section, keys)}' " \
                   f"(= {item['input']!r}); see README.md for the keys each section accepts"
        elif item["type"] == "missing" and not keys:
            line = f"{path}: missing section '{section}'"
        elif item["type"] == "missing" and section in TRAIN_SECTIONS:
            missing.setdefault(".".join(keys), set()).add(section)
            continue
        elif not keys:
            whole.setdefault(message, []).append(section)
            continue
        elif item["type"] == "missing":
            line = f"{path}: missing key '{_where(data or {}, section, keys)}'"
        else:
            line = f"{path}: {_where(data or {}, section, keys)} = {item['input']!r}: {message}"
        if line not in lines:
            lines.append(line)
    for message, sections in whole.items():
        if set(TRAIN_SECTIONS) <= set(sections):  # the shared section's doing
            sections = [SHARED, *(s for s in sections if s not in TRAIN_SECTIONS)]
        lines += [f"{path}: {section}: {message}" for section in sections]
    for key, sections in missing.items():
        where = f"'{SHARED}.{key}'" if len(sections) == len(TRAIN_SECTIONS) else \
            " and ".join(f"'{section}.{key}'" for section in sorted(sections))
        lines.append(f"{path}: missing key {where} (a key of {SHARED} reaches every model; "
                     f"one in train_<model> is that model's own)")
    return "invalid params:\n  " + "\n  ".join(lines)


def parse_params(data: dict[str, Any], path: Path) -> Params:
    """Validate a params mapping (the file's sections) into typed sections, or raise
    ConfigError naming each bad key."""
    for section in (SHARED, *TRAIN_SECTIONS):
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ConfigError(f"{path}: {section}: expected a mapping of keys, got "
                              f"{data[section]!r}")
    sections = {name: value for name, value in data.items() if name != SHARED}
    for name in TRAIN_SECTIONS:
        if name in data:
            sections[name] = merged(data.get(SHARED) or {}, data[name] or {})
    try:
        return TypeAdapter(Params).validate_python(sections)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, path, data)) from None


def load_params(path: Path | str) -> Params:
    """Read and validate a whole params file; every section must be there."""
    path = Path(path)
    data = read_yaml(path)
    missing = [name for name in file_sections() if name not in data]
    if missing:
        raise ConfigError(f"{path}: {'empty' if not data else 'incomplete'}: missing "
                          f"section(s) {', '.join(missing)}; start from the shipped "
                          f"params.yaml or a file in configs/")
    return parse_params(data, path)


def check_starts(params: Params, path: Path) -> None:
    """Every file a `pretrained:` names exists: checked before any stage runs, since DVC
    removes a training stage's outputs (its logs are not cached) before the stage could
    find its start missing. One line for every missing file and the keys naming it."""
    missing: dict[str, list[str]] = {}
    data = read_yaml(path)
    for section in TRAIN_SECTIONS:
        start = getattr(params, section).pretrained
        if start and names_a_file(start) and not Path(start).is_file():
            missing.setdefault(start, []).append(_where(data, section, ["pretrained"]))
    if missing:
        files = "; ".join(f"{' and '.join(dict.fromkeys(keys))} = {start}"
                          for start, keys in missing.items())
        raise ConfigError(f"{path}: no such pretrained file: {files}; restore the shipped "
                          f"starts with `git checkout models/pretrained`, give the file's "
                          f"path, or set pretrained: null to train from random initialisation")
