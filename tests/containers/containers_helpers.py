"""Helpers of the container tests: a small Dockerfile reader, .dockerignore, a file server.

Docker cannot run on the CI machines, so the tests read the Dockerfile themselves:
:func:`parse_dockerfile` returns its stages and instructions (line continuations joined,
comments kept as the ``marks`` of the next instruction), :func:`replay_steps` turns the
``# replay`` RUN lines into shell commands with the ARG/ENV environment Docker would give
them, and :func:`copy_build_context` copies the repository as ``docker build`` would send
it (honouring ``.dockerignore``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"
SHARED_ATLASES = SHARED / "atlases"
DOCKERFILE = REPO_ROOT / "Dockerfile"
REPLAY_MARK = "replay"


# ---------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, ARG, ENV, RUN, ...
    args: str  # the rest, continuation lines joined
    line: int  # 1-based line of the keyword
    marks: list[str] = field(default_factory=list)  # comment lines right above it (without '#')

    @property
    def replay(self) -> bool:
        return any(m.strip() == REPLAY_MARK for m in self.marks)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: list[Instruction]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for st in self.stages:
            if st.name == name:
                return st
        raise KeyError(name)


def _instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    marks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped:
            marks = []
            i += 1
            continue
        if stripped.startswith("#"):
            marks.append(stripped[1:].strip())
            i += 1
            continue
        start = i
        parts = []
        while True:
            line = lines[i].rstrip()
            if line.strip().startswith("#") and parts:  # comment inside a continued instruction
                i += 1
                continue
            if line.endswith("\\"):
                parts.append(line[:-1])
                i += 1
                continue
            parts.append(line)
            i += 1
            break
        joined = " ".join(p.strip() for p in parts)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start + 1, marks))
        marks = []
    return out


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Stages and instructions of a Dockerfile (enough of the syntax for ours)."""
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for ins in _instructions(Path(path).read_text()):
        if ins.keyword == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", ins.args, re.IGNORECASE)
            assert m, f"cannot parse FROM at line {ins.line}: {ins.args}"
            stages.append(Stage(m.group(1), m.group(2), []))
        elif not stages:
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand(value: str, env: dict[str, str]) -> str:
    """Docker's variable substitution: ``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR:+word}``."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        val = env.get(name, "")
        if m.group(2) == "-":
            return val or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if val else ""
        return val

    return _VAR.sub(sub, value)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def key_values(args: str) -> list[tuple[str, str | None]]:
    """``K=V K2="V 2"`` (or the legacy ``K V``) of an ARG/ENV/LABEL instruction."""
    tokens = re.findall(r'(?:[^\s"\']+|"[^"]*"|\'[^\']*\')+', args)
    if tokens and "=" not in tokens[0]:
        if len(tokens) == 1:
            return [(tokens[0], None)]  # ARG NAME
        return [(tokens[0], " ".join(tokens[1:]))]  # ENV K V
    out = []
    for tok in tokens:
        key, _, val = tok.partition("=")
        out.append((key, "".join(_unquote(p) for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^"\']+', val))))
    return out


def global_arg_defaults(df: Dockerfile) -> dict[str, str]:
    return {k: (v or "") for ins in df.global_args if ins.keyword == "ARG" for k, v in key_values(ins.args)}


@dataclass
class Step:
    stage: str
    line: int
    command: str  # the shell command, without the RUN flags
    env: dict[str, str]
    workdir: str  # the image path; the caller maps it
    mounts: list[dict[str, str]] = field(default_factory=list)  # RUN --mount=k=v,... flags

    def secrets(self) -> list[str]:
        """Ids of the build secrets this step mounts (at /run/secrets/<id>)."""
        return [m["id"] for m in self.mounts if m.get("type") == "secret"]


def run_flags(args: str) -> tuple[list[dict[str, str]], str]:
    """Split ``RUN --mount=type=secret,id=x --network=none cmd`` into its mounts and the command."""
    mounts = []
    rest = args.lstrip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if flag.startswith("--mount="):
            opts = {}
            for kv in flag[len("--mount="):].split(","):
                k, _, v = kv.partition("=")
                opts[k] = v
            mounts.append(opts)
    return mounts, rest


def stage_env(df: Dockerfile, stage: str, base_env: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The ENV of ``stage`` (as a container started from it sees it), with ``overrides``."""
    env = dict(base_env)
    args: dict[str, str] = {}
    for ins in df.stage(stage).instructions:
        if ins.keyword == "ARG":
            for key, default in key_values(ins.args):
                args[key] = overrides.get(key, expand(default or "", {**env, **args}))
        elif ins.keyword == "ENV":
            for key, val in key_values(ins.args):
                env[key] = overrides.get(key, expand(val or "", {**env, **args}))
    return env


def replay_steps(
    df: Dockerfile,
    stages: list[str],
    base_env: dict[str, str],
    overrides: dict[str, str],
) -> list[Step]:
    """The ``# replay`` RUN lines of ``stages`` (in order) with the environment Docker gives them.

    ``base_env`` is the base image's environment; ``overrides`` win over every ARG default
    and ENV value of the same name (like ``--build-arg``, and for ENV paths the test maps
    into a temporary folder). A stage ``FROM <earlier stage>`` starts from that stage's ENV.
    """
    globals_ = global_arg_defaults(df)
    envs: dict[str, dict[str, str]] = {}
    workdirs: dict[str, str] = {}
    steps: list[Step] = []
    for st in df.stages:
        parent = st.base if st.base in envs else None
        env = dict(envs[parent]) if parent else dict(base_env)
        workdir = workdirs[parent] if parent else "/"
        args: dict[str, str] = {}
        for ins in st.instructions:
            if ins.keyword == "ARG":
                for key, default in key_values(ins.args):
                    if key in overrides:
                        args[key] = overrides[key]
                    elif default is None:
                        if key in globals_:  # else unset, as Docker leaves an ARG without a value
                            args[key] = globals_[key]
                    else:
                        args[key] = expand(default, {**env, **args})
            elif ins.keyword == "ENV":
                for key, val in key_values(ins.args):
                    env[key] = overrides.get(key, expand(val or "", {**env, **args}))
            elif ins.keyword == "WORKDIR":
                workdir = expand(ins.args, {**env, **args})
            elif ins.keyword == "RUN" and ins.replay and st.name in stages:
                mounts, command = run_flags(ins.args)
                steps.append(Step(st.name, ins.line, command, {**args, **env}, workdir, mounts))
        if st.name:
            envs[st.name] = env
            workdirs[st.name] = workdir
    return steps


# ---------------------------------------------------------------------------------------------
# .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern:
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out += pattern[i:j + 1]
            i = j + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern, str]]:
    """``(is_exception, regex, pattern)`` per line of a ``.dockerignore``."""
    rules = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip()
        rules.append((negate, _pattern_regex(pattern), pattern.strip("/")))
    return rules


def ignored(relpath: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex, _ in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def copy_build_context(src: Path, dest: Path) -> list[str]:
    """Copy the files of ``src`` that ``docker build src`` would send; return their relative paths."""
    rules = dockerignore_rules(src / ".dockerignore") if (src / ".dockerignore").is_file() else []
    copied = []
    for dirpath, dirnames, filenames in os.walk(src):
        reldir = Path(dirpath).relative_to(src).as_posix()
        reldir = "" if reldir == "." else reldir + "/"
        keep = []
        for d in sorted(dirnames):
            rel = reldir + d
            # an ignored folder is walked only when an exception pattern may re-include inside it
            if rel in (".git", ".venv") or (ignored(rel, rules) and not any(
                    neg and (pat.startswith(rel + "/") or "*" in pat) for neg, _, pat in rules)):
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = reldir + name
            if ignored(rel, rules) or not os.path.isfile(os.path.join(dirpath, name)):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(dirpath, name), target)
            copied.append(rel)
    return copied


# ---------------------------------------------------------------------------------------------
# a real HTTP server on 127.0.0.1 (the atlas mirror)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` from a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
