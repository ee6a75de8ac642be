"""Read the deployment files the way Docker would: compose interpolation, env files, Dockerfile instructions.

Docker cannot run on the test machines, so the tests take the deployment apart with these small readers and
check or run the pieces. Each reader covers what this repository's files use and raises on anything else,
so a file that grows past them fails loudly instead of being half-read.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
SETTINGS_DIR = ROOT / "diffusion_api" / "settings"


# --- .env files (compose's format: KEY=VALUE lines, '#' comments, no quoting used here).
def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ValueError(f"{path.name}:{number}: not KEY=VALUE: {line!r}")
        if value[:1] in {"'", '"'} or " #" in value:
            raise ValueError(f"{path.name}:{number}: quotes and inline comments are read differently by tools")
        values[key] = value
    return values


# --- Compose interpolation (Compose Specification, "Interpolation"): $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d},
# ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, ${VAR+alt}.
_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.DOTALL)


class InterpolationError(ValueError):
    pass


def interpolate(text: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return variables.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise InterpolationError(f"invalid interpolation {match[0]!r}")
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        value, is_set = variables.get(name), name in variables
        if op is None:
            return value or ""
        if op in (":-", "-"):
            return value if (value if op == ":-" else is_set) else arg
        if op in (":?", "?"):
            if not (value if op == ":?" else is_set):
                raise InterpolationError(f"{name}: {arg}")
            return value
        return arg if (value if op == ":+" else is_set) else ""  # :+ and +

    return _VARIABLE.sub(replace, text)


def variables_used(text: str) -> set[str]:
    """Names of the variables a compose file interpolates."""
    names = set()
    for match in _VARIABLE.finditer(text):
        if match["named"]:
            names.add(match["named"])
        elif match["braced"] is not None:
            names.add(_BRACED.fullmatch(match["braced"])["name"])
    return names


def _interpolate_tree(node, variables: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, variables) for key, value in node.items()}
    return node


def load_compose_raw() -> dict:
    """The file as YAML (anchors and merge keys resolved), before interpolation: what the schema describes."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_compose(variables: dict[str, str]) -> dict:
    """The file as compose sees it with these variables (its .env): YAML first, then interpolation of values."""
    return _interpolate_tree(load_compose_raw(), variables)


def as_argv(value) -> list[str]:
    """A compose `command`/`entrypoint`: exec form (a list) as is; shell form split like compose does."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else shlex.split(value)


def service_environment(service: dict, variables: dict[str, str], base_dir: Path = ROOT) -> dict[str, str]:
    """env_file values, then `environment` over them (compose's order). `.env` is read from `variables`."""
    env: dict[str, str] = {}
    env_files = service.get("env_file") or []
    for entry in [env_files] if isinstance(env_files, str | dict) else env_files:
        path = entry["path"] if isinstance(entry, dict) else entry
        env.update(variables if path == ".env" else read_env_file(base_dir / path))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({key: "" if value is None else str(value) for key, value in environment.items()})
    return env


# --- Dockerfile: instructions with their continuation lines joined, grouped into stages.
@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of a CMD/ENTRYPOINT/HEALTHCHECK CMD (shell form is not used here)."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(?:--[a-z-]+=\S+\s+)*CMD\s+", "", text)
        return json.loads(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def environment(self) -> dict[str, str]:
        """ENV key=value pairs in order; `$VAR` in a value refers to what came before (e.g. PATH)."""
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                key, sep, value = pair.partition("=")
                if not sep:
                    raise ValueError(f"line {instruction.line}: use ENV KEY=VALUE")
                env[key] = value
        return env


def read_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1].strip() + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", arguments.strip(), re.IGNORECASE)
            stages.append(Stage(base=match[1], name=match[2]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments.strip(), start))
        logical = ""
    return stages


# --- Which environment variables the settings read (env_bool/env_int/env_float/os.environ).
_SETTING_READS = re.compile(
    r"""(?:os\.environ(?:\.get)?\(\s*|os\.environ\[\s*|env_(?:bool|int|float)\(\s*)["']([A-Z][A-Z0-9_]*)["']"""
)


def settings_variables() -> set[str]:
    names = set()
    for path in SETTINGS_DIR.glob("*.py"):
        names.update(_SETTING_READS.findall(path.read_text()))
    return names
