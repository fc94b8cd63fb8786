"""pico-compare (pico/compare.py: label-free selection, grid planning, tables, plot), its
source-tree wrapper bench/compare.py and bench/common.py."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import json
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_pll_mat
from matplotlib.image import imread

from pico import compare

BENCH = Path(__file__).resolve().parents[1] / "bench"
BIN = Path(sys.executable).parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wrapper = _load("compare")
common = sys.modules["common"]  # imported by bench/compare.py from bench/


def test_bench_folder_leaves_sys_path_after_import() -> None:
    # on sys.path, bench/baselines.py would shadow the `baselines` package for later imports
    assert str(BENCH) not in sys.path
    spec = importlib.machinery.PathFinder.find_spec("baselines", sys.path)
    assert spec is None or Path(spec.origin).parent != BENCH
    assert wrapper.main is compare.main


def test_wrapper_records_to_bench_results_by_default(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["bench/compare.py", "--help"])
    # argparse wraps help at the terminal width, and may break a path at a hyphen
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCH / "compare.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python bench/compare.py ")
    assert f"(default: {BENCH / 'RESULTS.md'})" in out


def _naive_select(history: list[dict], criterion: str) -> dict:
    usable = [h for h in history if criterion in h and "test/top1" in h]
    top = max(h[criterion] for h in usable)
    return [h for h in usable if h[criterion] == top][-1]  # ties: the later epoch


@pytest.mark.parametrize("criterion", compare.CRITERIA)
def test_select_epoch_matches_naive_loop(criterion: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        # few distinct values so that ties are common
        values = rng.choice([0.1, 0.5, 0.7, 0.9], size=n)
        history = []
        for epoch, value in enumerate(values, start=1):
            entry = {"epoch": epoch, "test/top1": float(rng.random())}
            if epoch == 1 or rng.random() > 0.2:  # some epochs were not evaluated
                entry[criterion] = float(value)
            history.append(entry)
        assert compare.select_epoch(history, criterion) is _naive_select(history, criterion)


def test_select_epoch_needs_the_criterion() -> None:
    with pytest.raises(ValueError, match="val/covering_rate"):
        compare.select_epoch(
            [{"epoch": 1, "val/approx_acc": 0.5, "test/top1": 0.4}], "val/covering_rate"
        )


def _write_job(
    job: Path,
    method: str,
    q: float | None,
    seed: int,
    history: list[dict],
    eta: float | None = None,
    mat: str | None = None,
) -> None:
    """A finished multirun job as pico-train writes it; with ``mat`` a ``data=mat`` run
    on the file ``mat`` (``q`` is then None: the file's own candidates)."""
    (job / ".hydra").mkdir(parents=True)
    if mat is None:
        overrides = [f"method={method}", "data=digits", f"data.candidates.q={q}", f"seed={seed}"]
        candidates = (
            {"name": "uniform", "q": q} if eta is None else {"name": "noisy", "q": q, "eta": eta}
        )
        data = {"name": "digits", "candidates": candidates}
    else:
        overrides = [f"method={method}", "data=mat", f"data.path={mat}", f"seed={seed}"]
        data = {"name": "mat", "path": mat, "candidates": None}
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"seed": seed, "data": data, "trainer": {"epochs": len(history)}}
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    best = history[-1]
    (job / "metrics.json").write_text(json.dumps({"history": history, "best": best, "final": best}))


def _history(rng: np.random.Generator, epochs: int = 5) -> list[dict]:
    return [
        {
            "epoch": e,
            "val/approx_acc": float(rng.random()),
            "val/covering_rate": float(rng.random()),
            "test/top1": float(rng.random()),
        }
        for e in range(1, epochs + 1)
    ]


def _cell(values: list[float]) -> str:
    pct = 100 * np.asarray(values)
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{pct.mean():.2f} ± {pct.std(ddof=1):.2f}"


def test_collect_and_table_against_naive_aggregation(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    expected: dict[tuple[str, float], list[float]] = {}
    k = 0
    for method, q, seed in itertools.product(["proden", "pico"], [0.7, 0.3], [0, 1, 2]):
        if (method, q, seed) == ("pico", 0.7, 2):
            continue  # a missing run: that cell has two seeds
        history = _history(rng)
        _write_job(tmp_path / "sweep" / str(k), method, q, seed, history)
        k += 1
        chosen = _naive_select(history, "val/covering_rate")
        expected.setdefault((method, q), []).append(chosen["test/top1"])
    results = compare.collect(tmp_path, "val/covering_rate")
    assert len(results) == 11
    lines = compare.table(results, methods=["pico", "proden"]).splitlines()
    assert lines[0] == "| method | digits, q=0.3 | digits, q=0.7 |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == (
        f"| pico | {_cell(expected['pico', 0.3])} | {_cell(expected['pico', 0.7])} (n=2) |"
    )
    assert lines[3] == (
        f"| proden | {_cell(expected['proden', 0.3])} | {_cell(expected['proden', 0.7])} |"
    )
    assert len(lines) == 4
    # the other criterion selects other epochs
    other = compare.collect(tmp_path, "val/approx_acc")
    assert [r.epoch for r in other] != [r.epoch for r in results]


def test_table_marks_missing_cells_and_noise_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _write_job(tmp_path / "0", "pico", 0.3, 0, _history(rng))
    _write_job(tmp_path / "1", "proden", 0.3, 0, _history(rng), eta=0.2)
    results = compare.collect(tmp_path, "val/approx_acc")
    lines = compare.table(results, methods=["proden", "pico"]).splitlines()
    assert lines[0] == "| method | digits, q=0.3 | digits, q=0.3, η=0.2 |"
    assert lines[2].startswith("| proden | - | ")
    assert lines[3].startswith("| pico | ") and lines[3].endswith(" | - |")


def test_main_collect_reports_the_finished_runs(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(6)
    for seed in (2, 0):
        _write_job(tmp_path / "runs" / str(seed), "proden", 0.5, seed, _history(rng), eta=0.3)
    plot = tmp_path / "cmp.png"
    compare.main(["--collect", str(tmp_path / "runs"), "--plot", str(plot), "--seeds", "7"])
    out = capsys.readouterr().out
    assert "- budget: 2 runs; trainer.epochs digits 5\n" in out
    assert "- candidates: noisy (PiCO+ rule: true label dropped with prob. η); seeds: 0 2\n" in out
    assert "| method | digits, q=0.5, η=0.3 |" in out and plot.is_file()


def test_mat_runs_are_named_by_their_file_and_given_candidates(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    _write_job(tmp_path / "0" / "0", "pico", 0.3, 0, _history(rng))
    for k, (method, seed) in enumerate(itertools.product(["proden", "pico"], [0, 1])):
        for stem in ("italian", "FG-NET"):
            _write_job(
                tmp_path / stem / str(k), method, None, seed, _history(rng), mat=f"/d/{stem}.mat"
            )
    results = compare.collect(tmp_path, "val/approx_acc")
    assert {(r.data, r.q, r.eta) for r in results if r.data != "digits"} == {
        ("italian", None, None),
        ("FG-NET", None, None),
    }
    lines = compare.table(results, ["pico", "proden"], ["digits", "italian", "FG-NET"])
    header, _, pico, proden = lines.splitlines()
    assert header == (
        "| method | digits, q=0.3 | italian, given candidates | FG-NET, given candidates |"
    )
    assert pico.startswith("| pico | ") and " ± " in pico
    assert proden.startswith("| proden | - | ") and " (n=" not in proden
    # given-candidate data get one panel of their own, beside the q panel of digits
    image = imread(compare.plot(results, tmp_path / "cmp.png"))
    assert image.shape[:2] == (432, 2 * 540)


def test_collect_rejects_a_grid_point_run_twice(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    _write_job(tmp_path / "a" / "0", "pico", 0.3, 0, _history(rng))
    _write_job(tmp_path / "b" / "0", "pico", 0.3, 0, _history(rng))
    results = compare.collect(tmp_path, "val/approx_acc")
    with pytest.raises(ValueError, match="run twice"):
        compare.table(results)


def test_collect_needs_finished_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no finished runs"):
        compare.collect(tmp_path, "val/approx_acc")


def test_plot_writes_one_panel_per_dataset_and_eta(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for k, (method, q, seed) in enumerate(
        itertools.product(["pico", "proden"], [0.1, 0.5], [0, 1])
    ):
        _write_job(tmp_path / "runs" / str(k), method, q, seed, _history(rng))
        _write_job(tmp_path / "runs" / f"n{k}", method, q, seed, _history(rng), eta=0.1)
    results = compare.collect(tmp_path / "runs", "val/approx_acc")
    path = compare.plot(results, tmp_path / "fig" / "cmp.png")
    image = imread(path)
    assert image.shape[0] == 432 and image.shape[1] == 2 * 540  # 3.6 in x (2 x 4.5 in), 120 dpi


@pytest.mark.parametrize(
    ("datasets", "methods", "qs", "etas", "seeds", "parallel"),
    [
        (["digits"], ["a", "b", "c"], [0.3, 0.7], [], [0, 1, 2], 1),
        (["digits"], ["a", "b", "c"], [0.3, 0.7], [], [0, 1, 2], 4),
        (["digits", "fmnist"], ["a"], [0.3], [0.1, 0.2], [0], 3),
        (["digits", "fmnist"], ["a", "b"], [0.3], [], [0], 16),
        (["d1", "d2", "d3"], ["a", "b"], [0.3], [], [0, 1], 2),
        (["digits", "x.mat", "y.mat"], ["a", "b"], [0.3, 0.7], [0.1], [0, 1], 1),
        (["digits", "x.mat", "y.mat"], ["a", "b"], [0.3, 0.7], [0.1], [0, 1], 8),
        (["x.mat"], ["a"], [0.3, 0.7], [0.1, 0.2], [0], 4),
    ],
)
def test_plan_covers_the_grid_once_in_parallel_sweeps(datasets, methods, qs, etas, seeds, parallel):
    # a .mat file carries its candidate sets: one run per method and seed, no q or eta
    data = [compare.Data.parse(d) if d.endswith(".mat") else compare.Data(d, d) for d in datasets]
    data = [compare.Data(d.name, d.config, d.path, generated=d.path is None) for d in data]
    sweeps = compare.plan(data, methods, qs, etas, seeds, parallel)
    points = [
        point
        for s in sweeps
        for point in itertools.product(
            [s.data.name], s.methods, s.qs or [None], s.etas or [None], s.seeds
        )
    ]
    full = [
        point
        for d in data
        for point in itertools.product(
            [d.name],
            methods,
            qs if d.generated else [None],
            (etas or [None]) if d.generated else [None],
            seeds,
        )
    ]
    assert sorted(points, key=str) == sorted(full, key=str)
    assert sum(s.size for s in sweeps) == len(full)
    assert len(sweeps) == max(len(datasets), min(parallel, len(full)))
    for s in sweeps:
        flags = [o for o in s.overrides() if o.startswith(("data.candidates", "++data.cand"))]
        assert bool(flags) == s.data.generated


def test_dry_run_prints_one_multirun_per_sweep(capsys) -> None:
    compare.main(
        [
            "--dry-run",
            *("--methods", "pico", "proden"),
            *("--data", "digits", "fashion_mnist"),
            *("--q", "0.3", "0.7", "--eta", "0.1", "--seeds", "0", "1"),
            *("--common", "trainer.epochs=3"),
            *("--data-overrides", "fashion_mnist: trainer.epochs=20 model.widths=[16,32,64]"),
            *("--threads", "2"),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    digits, fashion = (shlex.split(line) for line in lines)
    assert digits[0] == "OMP_NUM_THREADS=2" and digits[1].endswith("pico-train")
    assert digits[2] == "-m"
    for args in (digits, fashion):
        assert "method=pico,proden" in args and "data.candidates.q=0.3,0.7" in args
        assert "seed=0,1" in args and "++data.candidates.eta=0.1" in args
        assert "data.candidates.name=noisy" in args and "trainer.epochs=3" in args
        assert args[-1].startswith("hydra.sweep.dir=")
    assert "data=digits" in digits and "model.widths=[16,32,64]" not in digits
    assert "data=fashion_mnist" in fashion and "model.widths=[16,32,64]" in fashion
    # the dataset's own overrides come after the common ones, so they win
    assert fashion.index("trainer.epochs=20") > fashion.index("trainer.epochs=3")


def test_dry_run_passes_candidate_flags_only_where_generated(tmp_path: Path, capsys) -> None:
    files = [
        write_pll_mat(tmp_path / "italian.mat", seed=0),
        write_pll_mat(tmp_path / "my data.mat", seed=1),
    ]
    compare.main(
        [
            "--dry-run",
            *("--methods", "proden", "cc", "--seeds", "0", "--q", "0.5", "--eta", "0.2"),
            *("--data", "digits", *map(str, files)),
            *("--data-overrides", "my data: trainer.epochs=7"),
        ]
    )
    digits, italian, spaced = (shlex.split(line) for line in capsys.readouterr().out.splitlines())
    assert "data.candidates.q=0.5" in digits and "data.candidates.name=noisy" in digits
    assert "data=mat" not in digits
    for args in (italian, spaced):
        assert "data=mat" in args and not any("candidates" in a for a in args)
        assert "method=proden,cc" in args and "seed=0" in args
    assert f"data.path={files[0]}" in italian and "trainer.epochs=7" not in italian
    assert f"data.path='{files[1]}'" in spaced and "trainer.epochs=7" in spaced


def test_with_candidates_reads_the_composed_config() -> None:
    digits = compare.Data("digits", "digits")
    assert compare.with_candidates(digits, ["trainer.epochs=3"]).generated
    # a dataset with its own candidate column says so with data.candidates=null
    hf = compare.with_candidates(compare.Data("hf", "hf"), ["data.candidates=null"])
    assert not hf.generated
    mat = compare.with_candidates(compare.Data.parse("/no/such/file.mat"), [])
    assert mat.name == "file" and not mat.generated
    with pytest.raises(ValueError, match=r"^digits: .*trainer\.epoch=3.*do not compose"):
        compare.with_candidates(digits, ["trainer.epoch=3"])
    with pytest.raises(ValueError, match=r"no sweeps"):
        compare.with_candidates(digits, ["trainer.epochs=1,2"])


def test_check_data_names_missing_files_and_clashing_stems(tmp_path: Path) -> None:
    first = write_pll_mat(tmp_path / "lost.mat", seed=0)
    (tmp_path / "b").mkdir()
    second = write_pll_mat(tmp_path / "b" / "lost.mat", seed=1)
    compare.check_data([compare.Data.parse(str(first)), compare.Data("digits", "digits")])
    with pytest.raises(ValueError, match="names lost more than once"):
        compare.check_data([compare.Data.parse(str(first)), compare.Data.parse(str(second))])
    with pytest.raises(ValueError, match=r"nope\.mat: no such \.mat file"):
        compare.check_data([compare.Data.parse(str(tmp_path / "nope.mat"))])


def test_train_script_beside_the_running_console_script(tmp_path: Path, monkeypatch) -> None:
    script = tmp_path / "pico-train"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "pico-compare")])
    assert compare.train_script() == str(script)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert Path(compare.train_script()).parent == BIN  # this Python's scripts folder
    monkeypatch.setattr(compare.sysconfig, "get_path", lambda name: str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(ValueError, match="pico-train is not installed"):
        compare.train_script()


def test_record_needs_a_results_file(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(8)
    _write_job(tmp_path / "runs" / "0", "pico", 0.3, 0, _history(rng))
    with pytest.raises(SystemExit):
        compare.main(["--collect", str(tmp_path / "runs"), "--record"])
    assert "--record needs --results FILE" in capsys.readouterr().err
    results = tmp_path / "RESULTS.md"
    results.write_text("# head\n")
    compare.main(["--collect", str(tmp_path / "runs"), "--record", "--results", str(results)])
    text = results.read_text()
    assert text.startswith("# head\n\n## PLL comparison on digits, ")
    assert f"- command: `pico-compare --collect {tmp_path / 'runs'} --record --results " in text
    assert (tmp_path / "runs" / "compare.png").is_file()  # the plot goes with the runs


def test_unknown_method_fails_early_naming_it(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--dry-run", "--methods", "pico", "no_such_method"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_method" in err and "no config method/NAME.yaml" in err
    assert "pico," not in err.split("choose from")[0]  # only the missing one is named


def test_check_configs_names_missing_dataset(tmp_path: Path) -> None:
    for group, name in (("method", "pico"), ("data", "digits")):
        (tmp_path / group).mkdir()
        (tmp_path / group / f"{name}.yaml").write_text("{}\n")
    compare.check_configs(["pico"], ["digits"], tmp_path)
    with pytest.raises(ValueError, match=r"data cifar: .*choose from digits or pass a path"):
        compare.check_configs(["pico"], ["digits", "cifar"], tmp_path)


def test_data_overrides_must_name_a_dataset() -> None:
    parsed = compare.parse_data_overrides(["digits: a=1 b=[1,2]", "digits: c=3"], ["digits", "x"])
    assert parsed == {"digits": ["a=1", "b=[1,2]", "c=3"], "x": []}
    with pytest.raises(ValueError, match="NAME one of the --data names"):
        compare.parse_data_overrides(["cifar10: a=1"], ["digits"])
    with pytest.raises(ValueError, match="NAME: OVERRIDES"):
        compare.parse_data_overrides(["digits"], ["digits"])


def test_q_outside_unit_interval_is_rejected(capsys) -> None:
    with pytest.raises(SystemExit):
        compare.main(["--dry-run", "--q", "1.5"])
    assert "1.5 is not a probability" in capsys.readouterr().err


def test_common_mean_std_against_numpy() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2, 5):
        values = rng.random(n).tolist()
        assert common.mean_std(values) == _cell(values)


def test_common_section_layout_and_record(tmp_path: Path) -> None:
    text = common.section("Title", ["machine: m", "command: `c`"], "| t |", intro="Intro.")
    lines = text.split("\n")
    assert lines[0] == "" and lines[1].startswith("## Title, 20")
    assert lines[2:] == ["", "Intro.", "", "- machine: m", "- command: `c`", "", "| t |", ""]
    assert common.section("T", ["a"], "b").split("\n")[2:] == ["", "- a", "", "b", ""]
    assert common.command_line("compare.py", ["--q", "0.3", "--common", "a=1 b=2"]) == (
        "python bench/compare.py --q 0.3 --common 'a=1 b=2'"
    )
    results = tmp_path / "RESULTS.md"
    results.write_text("# head\n")
    common.record(text, results)
    assert results.read_text() == "# head\n" + text


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path: Path, capsys) -> None:
    plot = tmp_path / "cmp.png"
    compare.main(
        [
            *("--methods", "proden", "supervised", "--q", "0.3", "--seeds", "0"),
            *("--common", "trainer.epochs=2 model.widths=[8,16,16]"),
            *("--out", str(tmp_path / "runs"), "--plot", str(plot)),
        ]
    )
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == "| method | digits, q=0.3 |"
    assert [row.split(" | ")[0] for row in table[1:]] == ["| proden", "| supervised"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # PRODEN's own best.pt is chosen by the same criterion: the same epoch and accuracy
    (metrics,) = [
        json.loads(p.read_text())
        for p in (tmp_path / "runs").rglob("metrics.json")
        if "method=proden" in (p.parent / ".hydra" / "overrides.yaml").read_text()
    ]
    cell = float(table[1].split(" | ")[1].strip(" |"))
    assert cell == pytest.approx(100 * metrics["best"]["test/top1"], abs=0.006)
    assert len(metrics["history"]) == 2


@pytest.mark.slow
def test_pico_compare_console_script_on_two_mat_files(tmp_path: Path) -> None:
    files = [
        write_pll_mat(tmp_path / "italian.mat", seed=0),
        write_pll_mat(tmp_path / "FG-NET.mat", seed=1),
    ]
    work = tmp_path / "elsewhere"  # not the source tree
    work.mkdir()
    args = [
        BIN / "pico-compare",
        *("--methods", "proden", "cc", "--seeds", "0", "--data", *files),
        *("--common", "trainer.epochs=2 model.hidden=[16]"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| method | italian, given candidates | FG-NET, given candidates |"
    assert [row.split(" | ")[0] for row in table[1:]] == ["| proden", "| cc"]
    (root,) = (work / "runs").iterdir()  # runs/compare_<time> of the current folder
    assert root.name.startswith("compare_") and (root / "compare.png").is_file()
    assert len(list(root.rglob("metrics.json"))) == 4
