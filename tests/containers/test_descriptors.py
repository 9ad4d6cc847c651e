"""The Boutiques descriptors and the click CLI cannot drift apart silently.

- ``bosh validate`` (``--bids`` for the BIDS levels) passes;
- every descriptor input maps onto a real CLI parameter with the same type, choices and
  list-ness, every CLI option is in a descriptor (``[group]``/``[pretrain]`` options only in
  the descriptor of that level), every value-key is in the command line and back;
- ``error-codes`` are exactly the non-zero codes of :mod:`bids_semantoks.errors`;
- ``bosh exec simulate`` on each example invocation (``descriptors/examples/<descriptor>/``)
  and on ``bosh example -c`` invocations (every optional input, random values) yields a
  command line that the CLI parses (``cli.make_context``; the pipeline is not run), and the
  parsed values equal the invocation's.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

from bids_semantoks import errors
from bids_semantoks.cli import _Greedy, cli

from containers_helpers import REPO_ROOT

DESCRIPTORS = REPO_ROOT / "descriptors"
BIDS = DESCRIPTORS / "bids_semantoks.json"
PRETRAIN = DESCRIPTORS / "bids_semantoks_pretrain.json"
ALL = [BIDS, PRETRAIN]
EXAMPLES = sorted((DESCRIPTORS / "examples").glob("*/*.json"))
BOSH = str(Path(sys.executable).with_name("bosh"))
POSITIONAL = {"[BIDS_DIR]": "bids_dir", "[OUTPUT_DIR]": "output_dir", "[ANALYSIS_LEVEL]": "analysis_level"}
NOT_IN_DESCRIPTORS = {"help", "version"}  # eager click options, no run


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _bosh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BOSH, *args], capture_output=True, text=True, timeout=120)


def _option(flag: str) -> click.Parameter:
    for p in cli.params:
        if isinstance(p, click.Option) and flag in p.opts + p.secondary_opts:
            return p
    raise AssertionError(f"descriptor flag {flag} is not a CLI option")


def _argument(name: str) -> click.Argument:
    for p in cli.params:
        if isinstance(p, click.Argument) and p.name == name:
            return p
    raise AssertionError(f"no CLI argument {name}")


def _cli_options() -> list[click.Option]:
    return [p for p in cli.params if isinstance(p, click.Option) and p.name not in NOT_IN_DESCRIPTORS]


def _level_tag(param: click.Option) -> str | None:
    help_ = param.help or ""
    for tag in ("group", "pretrain"):
        if help_.startswith(f"[{tag}]"):
            return tag
    return None


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_bosh_validate(path):
    args = ["validate", str(path)] + (["--bids"] if path == BIDS else [])
    proc = _bosh(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if path == BIDS:
        assert "BIDS validation OK" in proc.stdout + proc.stderr


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_inputs_map_onto_cli_parameters(path):
    desc = _load(path)
    for inp in desc["inputs"]:
        where = f"{path.name}: input {inp['id']}"
        flag = inp.get("command-line-flag")
        if flag is None:
            param = _argument(POSITIONAL[inp["value-key"]])
        else:
            param = _option(flag)
        t = inp["type"]
        if t == "Flag":
            assert isinstance(param, click.Option) and (param.is_flag or param.count), f"{where}: CLI {param.name} is no flag"
            continue
        assert not (isinstance(param, click.Option) and (param.is_flag or param.count)), f"{where}: CLI {param.name} is a flag"
        ptype = param.type
        if isinstance(ptype, click.Choice):
            assert t == "String", where
            assert inp.get("value-choices"), f"{where}: CLI choices {ptype.choices} missing"
            if param.name == "analysis_level":
                assert set(inp["value-choices"]) <= set(ptype.choices), where
            else:
                assert list(inp["value-choices"]) == list(ptype.choices), where
        else:
            assert "value-choices" not in inp, f"{where}: choices but CLI {param.name} is {ptype.name}"
            if t == "Number":
                expected = click.INT if inp.get("integer") else click.FLOAT
                assert type(ptype) is type(expected), f"{where}: Number(integer={inp.get('integer')}) vs {ptype.name}"
            elif t in ("String", "File"):
                assert isinstance(ptype, (click.Path, click.types.StringParamType)), f"{where}: {t} vs {ptype.name}"
                if t == "File":
                    assert isinstance(ptype, click.Path), f"{where}: File but CLI {param.name} is not a path"
            else:
                raise AssertionError(f"{where}: unknown type {t}")
        if inp.get("list"):
            assert param.multiple and isinstance(param, _Greedy), (
                f"{where}: a list needs a multiple option taking several values after one flag (_Greedy)")
        if isinstance(param, click.Option) and param.multiple and not isinstance(param, _Greedy):
            assert not inp.get("list"), where


def test_every_cli_option_is_described_once_per_level():
    bids = {i.get("command-line-flag") for i in _load(BIDS)["inputs"]}
    pre = {i.get("command-line-flag") for i in _load(PRETRAIN)["inputs"]}
    for param in _cli_options():
        flags = set(param.opts + param.secondary_opts)
        in_bids, in_pre = bool(flags & bids), bool(flags & pre)
        assert in_bids or in_pre, f"CLI option {param.opts[0]} is in no descriptor"
        tag = _level_tag(param)
        if tag == "group":
            assert in_bids and not in_pre, f"{param.opts[0]} is a group option"
        if tag == "pretrain":
            assert in_pre and not in_bids, f"{param.opts[0]} is a pretrain option"
    for path in ALL:
        ids = [i["id"] for i in _load(path)["inputs"]]
        flags = [i["command-line-flag"] for i in _load(path)["inputs"] if "command-line-flag" in i]
        assert len(set(ids)) == len(ids) and len(set(flags)) == len(flags), path.name
    # the levels
    level = _argument("analysis_level").type.choices
    bids_levels = next(i for i in _load(BIDS)["inputs"] if i["value-key"] == "[ANALYSIS_LEVEL]")["value-choices"]
    assert set(bids_levels) | {"pretrain"} == set(level)
    assert " pretrain " in _load(PRETRAIN)["command-line"]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_value_keys_and_command_line_agree(path):
    import re

    desc = _load(path)
    cmd = desc["command-line"]
    keys = {i["value-key"] for i in desc["inputs"]}
    assert set(re.findall(r"\[[A-Z0-9_]+\]", cmd)) == keys
    assert cmd.split(";")[1].split()[0] == "bids_semantoks"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_error_codes_and_versions(path):
    desc = _load(path)
    codes = {c["code"] for c in desc["error-codes"]}
    defined = {v for k, v in vars(errors).items() if k.startswith("EX_") and isinstance(v, int)} - {errors.EX_OK}
    assert codes == defined
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert desc["tool-version"] == version
    assert desc["container-image"]["image"].endswith(f":{version}")


def _simulate(descriptor: Path, invocation: dict, tmp_path: Path) -> list[str]:
    inv = tmp_path / "invocation.json"
    inv.write_text(json.dumps(invocation))
    proc = _bosh("exec", "simulate", str(descriptor), "-i", str(inv))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    command = lines[lines.index("Generated Command:") + 1]
    mkdir, _, app = command.partition(";")
    tokens = shlex.split(app)
    assert tokens[0] == "bids_semantoks", command
    assert shlex.split(mkdir) == ["mkdir", "-p", tokens[2]], command
    return tokens[1:]


def _expected(param: click.Parameter, value):
    if isinstance(param, click.Option) and param.count:
        return 1 if value else 0
    if isinstance(param, click.Option) and param.is_flag:
        return True if value else None
    if param.multiple:
        return tuple(str(v) for v in (value if isinstance(value, list) else [value]))
    if isinstance(param.type, click.Path):
        return Path(value)
    if isinstance(param.type, click.types.IntParamType):
        return int(value)
    if isinstance(param.type, click.types.FloatParamType):
        return float(value)
    return str(value)


def _check_parses(descriptor: Path, invocation: dict, tmp_path: Path) -> None:
    args = _simulate(descriptor, invocation, tmp_path)
    try:
        ctx = cli.make_context("bids_semantoks", list(args))
    except click.ClickException as exc:  # pragma: no cover - the failure message
        raise AssertionError(f"the CLI rejects {shlex.join(args)}: {exc.format_message()}") from None
    desc = _load(descriptor)
    by_id = {i["id"]: i for i in desc["inputs"]}
    for key, value in invocation.items():
        inp = by_id[key]
        flag = inp.get("command-line-flag")
        param = _option(flag) if flag else _argument(POSITIONAL[inp["value-key"]])
        got = ctx.params[param.name]
        assert got == _expected(param, value), f"{descriptor.name}: {key}={value!r} parsed as {got!r}"
    if "pretrain" in desc["command-line"]:
        assert ctx.params["analysis_level"] == "pretrain"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_invocations_simulate_to_a_valid_command(example, tmp_path):
    descriptor = DESCRIPTORS / f"{example.parent.name}.json"
    assert descriptor.is_file(), f"{example}: no descriptor {descriptor.name}"
    proc = _bosh("invocation", str(descriptor), "-i", str(example))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_parses(descriptor, _load(example), tmp_path)


def test_examples_cover_every_level():
    levels = {_load(e).get("analysis_level", "pretrain") for e in EXAMPLES}
    assert levels == set(_argument("analysis_level").type.choices)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
@pytest.mark.parametrize("round_", range(3))
def test_complete_random_invocations_parse(path, round_, tmp_path):
    proc = _bosh("example", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    invocation = json.loads(proc.stdout)
    # the BIDS template's File alternative for OUTPUT_DIR is dropped by Boutiques (see its description)
    if "participant_level_analysis_dir" in invocation:
        invocation["output_dir_name"] = invocation.pop("participant_level_analysis_dir")
    described = {i["id"] for i in _load(path)["inputs"] if i.get("optional")}
    assert described - {"participant_level_analysis_dir", "output_dir_name"} <= set(invocation)
    _check_parses(path, invocation, tmp_path)
