"""Every option of every command says what it does and its real default; the README's methods
table lists every method of the registry."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from globeflow.cli import COMMANDS, ORDER, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _states_default(action: argparse.Action) -> bool:
    """Whether the help of ``action`` names its default: argparse's %(default)s, or the word
    "default" followed by the value (a number equal to it, or the string itself)."""
    text = action.help or ""
    if "%(default)" in text or f"{action.default} (default" in text:  # "adamw (default) or lamb"
        return True
    at = text.find("default")
    if at < 0:
        return False
    tail = text[at + len("default") :]
    value = action.default
    if isinstance(value, bool):
        return str(value).lower() in tail.lower()
    if isinstance(value, (int, float)):
        return any(float(tok) == float(value) for tok in _NUMBER.findall(tail))
    return str(value) in tail


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    """One line per option of ``parser`` and its subcommands that has no help text, or whose
    non-None default (other than a flag's False) its help does not state."""
    problems = []
    commands = {"": parser, **{f" {n}": p for n, p in _subparsers(parser).items()}}
    for name, p in commands.items():
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            option = "/".join(action.option_strings) or action.dest
            if not action.help or action.help == argparse.SUPPRESS:
                problems.append(f"globeflow{name} {option}: no help text")
                continue
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if action.default is None or action.default == argparse.SUPPRESS or flag or action.required:
                continue
            if not _states_default(action):
                problems.append(f"globeflow{name} {option}: help does not state the default {action.default!r}")
    return problems


def test_every_option_has_help_and_states_its_default():
    assert help_problems(build_parser()) == []


def test_the_check_finds_a_missing_help_and_an_unstated_default():
    # The checker above is what guards the real parser: it must fail on a bad one.
    parser = argparse.ArgumentParser(prog="globeflow")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("x")
    p.add_argument("--silent", type=int, default=3)
    p.add_argument("--wrong", type=float, default=8e-4, help="learning rate (default 5e-4)")
    p.add_argument("--right", type=float, default=8e-4, help="learning rate (default 8e-4)")
    p.add_argument("--named", default="rfm", help="method (default flow)")
    p.add_argument("--templated", type=int, default=7, help="steps (default %(default)s)")
    p.add_argument("--flag", action="store_true", help="a switch")
    assert help_problems(parser) == [
        "globeflow x --silent: no help text",
        "globeflow x --wrong: help does not state the default 0.0008",
        "globeflow x --named: help does not state the default 'rfm'",
    ]


def test_every_command_has_a_parser_and_a_function():
    assert sorted(ORDER) == sorted(COMMANDS) == sorted(_subparsers(build_parser()))


def _option_help(command: str, option: str) -> str:
    for action in _subparsers(build_parser())[command]._actions:
        if option in action.option_strings:
            return action.help
    raise AssertionError(f"globeflow {command} has no {option}")


def test_sample_defaults_decided_by_the_library_are_the_ones_the_help_states():
    # --samples defaults to None in these parsers: the library picks the number.
    from globeflow.demo import DEMO_SAMPLES, QUICK_DEMO_SAMPLES
    from globeflow.predict import ANSWER_SAMPLES

    from globeflow import answers

    assert f"default {DEMO_SAMPLES}, quick {QUICK_DEMO_SAMPLES}" in _option_help("demo", "--samples")
    assert f"default {ANSWER_SAMPLES}" in _option_help("predict", "--samples")
    # predict repeats the library's number (answers imports torch, the CLI's help must not).
    assert ANSWER_SAMPLES == answers.ANSWER_SAMPLES


@pytest.mark.parametrize("command", ["demo", "train", "distill", "embed", "predict", "evaluate", "compare", "density"])
def test_long_commands_can_turn_their_progress_bars_off(command):
    assert "--no-progress" in [o for a in _subparsers(build_parser())[command]._actions for o in a.option_strings]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import numpy as np
    import torch

    import globeflow
    from globeflow.data import write_parquet
    from globeflow.methods import create_method

    tmp = tmp_path_factory.mktemp("progress")
    torch.manual_seed(0)
    run = globeflow.save(create_method("rfm", 6, width=16, depth=1), tmp / "run")
    rng = np.random.default_rng(0)
    data = tmp / "test.parquet"
    write_parquet(data, rng.normal(size=(8, 6)).astype(np.float32), rng.uniform(-80, 80, 8), rng.uniform(-180, 180, 8))
    return run, data


def _stderr_of(capsys, argv: list[str]) -> str:
    from globeflow.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate", "density"])
def test_likelihood_solves_show_a_bar_that_no_progress_turns_off(command, tiny_run, tmp_path, capsys):
    run, data = tiny_run
    if command == "evaluate":
        argv = ["evaluate", "--model", str(run), "--data", str(data), "--density", "--no-prdc"]
        argv += ["--density-samples", "4", "--density-steps", "2", "--nll-steps", "2", "--sample-steps", "2"]
    else:
        argv = ["density", "--model", str(run), "--data", str(data), "--samples", "8", "--steps", "2"]
        argv += ["--resolution", "10"]
    for i, quiet in enumerate((False, True)):
        out = ["--out", str(tmp_path / (f"{i}.json" if command == "evaluate" else f"{i}.png"))]
        err = _stderr_of(capsys, argv + out + (["--no-progress"] if quiet else []))
        assert ("log p (rfm)" in err) is not quiet, err


def test_answers_and_maps_show_bars(tiny_run, tmp_path, capsys):
    import numpy as np

    from globeflow import load
    from globeflow.answers import answer
    from globeflow.viz.outputs import write_answer_files

    model = load(tiny_run[0])
    emb = np.random.default_rng(1).normal(size=(2, 6)).astype(np.float32)
    for progress in (True, False):
        capsys.readouterr()
        answers = answer(model, emb, num_samples=8, density_steps=2, progress=progress)
        records = [{"query": q, **a.to_dict()} for q, a in zip("ab", answers)]
        write_answer_files(records, answers, geojson=tmp_path / f"{progress}.geojson", progress=progress)
        err = capsys.readouterr().err
        assert ("log p (rfm)" in err) is progress and ("maps" in err) is progress, err


def _readme_methods() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE)


def test_readme_methods_tables_list_every_method_of_the_registry():
    from globeflow.methods import DISTILLED_CLASSES, METHOD_CLASSES

    names = _readme_methods()
    assert len(names) == len(set(names)), f"a method listed twice: {names}"
    assert sorted(names) == sorted({*METHOD_CLASSES, *DISTILLED_CLASSES})


def test_free_cpu_threads_leave_busy_cores_alone(monkeypatch):
    from globeflow import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    for load, want in ((0.0, 4), (1.2, 3), (2.6, 1), (9.0, 1)):
        monkeypatch.setattr(cli.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert cli.free_cpu_threads() == want


def test_threads_follow_omp_num_threads_when_set(monkeypatch):
    import torch

    from globeflow import cli

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(2)
        cli._pick_threads()
        assert torch.get_num_threads() == 2  # the user's setting is left alone
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(cli, "free_cpu_threads", lambda: 1)
        cli._pick_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_streaming_commands_bound_the_heap_and_text_queries_do_not(monkeypatch):
    import platform
    import subprocess
    import sys

    from globeflow import cli

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        # In a child: the setting lasts for the process.
        out = subprocess.run([sys.executable, "-c", "from globeflow.cli import bound_heap; print(bound_heap())"],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "True"
    calls = []
    monkeypatch.setattr(cli, "bound_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "evaluate": lambda a: 0, "predict": lambda a: 0})
    assert cli.main(["evaluate", "--model", "m", "--data", "d.parquet", "--out", "e.json"]) == 0 and calls == [1]
    assert cli.main(["predict", "--text", "Paris"]) == 0 and calls == [1]  # no --data: untouched
    assert cli.main(["predict", "--model", "m", "--data", "d.parquet", "--out", "o.parquet"]) == 0 and calls == [1, 1]
