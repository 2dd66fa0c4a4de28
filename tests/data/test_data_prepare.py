"""`prorl data prepare` on small local copies in the public formats (tests/fixtures/data): the
files it writes are the ones configs/prorl_1p5b_4node.yaml loads, rows kept and dropped are
reported, validation and benchmark problems are removed by normalised text, --only, resume
after a finished, failed or killed run, bad inputs, and the Reasoning Gym mix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from megatron_prorl import cli, domains
from megatron_prorl.config import DataConfig, DataSourceConfig
from megatron_prorl.train.validate import load_run_config
from megatron_prorl.data import BadRowWarning, load_data, load_source, save_rows
from megatron_prorl.data import prepare as prep
from megatron_prorl.data import reasoning_gym_mix as mix
from megatron_prorl.data.heldout import problem_key
from megatron_prorl.data.schema import Row

ROOT = Path(__file__).resolve().parents[2]
PAPER_CONFIG = ROOT / "configs" / "prorl_1p5b_4node.yaml"
TINY_LOGIC = ["--logic-train-size", "3", "--logic-val-size", "2"]  # ab, acre, advanced_geometry


def local_sources(fixtures: Path) -> list[str]:
    return ["--source", f"math={fixtures / 'deepscaler.json'}", "--source", f"code={fixtures / 'eurus2.parquet'}",
            "--source", f"stem={fixtures / 'scp116k.jsonl'}",
            "--source", f"ifeval={fixtures / 'llama_nemotron_if.jsonl'}"]


def run_prepare(capsys, *args) -> tuple[int, str, str]:
    rc = cli.main(["data", "prepare", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def paper_data(out: Path) -> DataConfig:
    os.environ["PRORL_DATA"] = str(out)
    try:
        return load_run_config(PAPER_CONFIG).data
    finally:
        del os.environ["PRORL_DATA"]


def quiet_load(cfg: DataConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadRowWarning)  # a prepared file has no bad rows
        return load_data(cfg)


@pytest.fixture(scope="module")
def prepared(fixtures, tmp_path_factory):
    """One full run as a real `prorl data prepare` process, with one training problem of every
    task of the mix and one validation problem per task (eight per held-out task)."""
    out = tmp_path_factory.mktemp("prorl_data")
    val_size = len(mix.TRAIN_WEIGHTS) + int(sum(mix.HELD_OUT.values()))
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_prorl.cli", "data", "prepare", "--out", str(out), *local_sources(fixtures),
         "--logic-train-size", str(len(mix.TRAIN_WEIGHTS)), "--logic-val-size", str(val_size)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_DATASETS_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_prepare_writes_the_files_the_paper_config_loads(prepared):
    out, _ = prepared
    cfg = paper_data(out)
    assert {Path(s.path) for s in cfg.train + cfg.val} == {
        out / name for name in ("math.jsonl", "code.jsonl", "stem.jsonl", "logic.jsonl", "ifeval.jsonl",
                                "logic_val.jsonl")}
    assert all(s.format == "prorl" for s in cfg.train + cfg.val)
    data = quiet_load(cfg)
    sizes = {Path(s.path).name: len(s.rows) for s in data.train + data.val}
    assert sizes == {"math.jsonl": 4, "code.jsonl": 2, "stem.jsonl": 2, "ifeval.jsonl": 4,
                     "logic.jsonl": len(mix.TRAIN_WEIGHTS), "logic_val.jsonl": len(mix.TRAIN_WEIGHTS) + 16}
    assert not any(s.dropped for s in data.train)  # prepare already held val out
    assert {r.domain for s in data.train for r in s.rows} == {"math", "code", "stem", "logic", "ifeval"}
    assert sorted(os.listdir(out)) == sorted([*sizes, "prepared.json"])  # no temporary file left


def test_prepare_reports_rows_kept_and_dropped_with_reasons(prepared):
    _, stdout = prepared
    assert "math.jsonl: deepscaler.json[math]: 4 rows, 3 bad" in stdout
    assert "code.jsonl: eurus2.parquet[code]: 2 rows, 3 bad, 2 dropped: domain math, source keeps code" in stdout
    assert "stem.jsonl: scp116k.jsonl[stem]: 2 rows, 2 bad, 2 dropped: no checkable final answer" in stdout
    assert "ifeval.jsonl: llama_nemotron_if.jsonl[ifeval]: 4 rows, 2 bad" in stdout
    assert "deepscaler.json: row 5: field 'problem' must be a string, got int; row skipped" in stdout
    manifest = json.loads((prepared[0] / "prepared.json").read_text())
    assert manifest["code.jsonl"]["dropped"] == {"domain math, source keeps code": 2}
    assert manifest["stem.jsonl"]["bad"] == 2


def test_logic_is_the_reasoning_gym_mix(prepared):
    out, _ = prepared
    train = load_source(DataSourceConfig(path=str(out / "logic.jsonl"))).rows
    val = load_source(DataSourceConfig(path=str(out / "logic_val.jsonl"))).rows
    assert Counter(r.ground_truth["task"] for r in train) == Counter(mix.TRAIN_WEIGHTS)  # one of each
    assert "boxnet" not in {r.ground_truth["task"] for r in train}
    val_tasks = Counter(r.ground_truth["task"] for r in val)
    assert val_tasks["boxnet"] == 8 and val_tasks["graph_color"] == 1 + 8
    vertices = Counter(r.ground_truth["entry"]["metadata"]["num_vertices"] for r in val
                       if r.ground_truth["task"] == "graph_color")
    assert vertices == {10: 1, 20: 8}  # the trained size, and the larger held-out one
    assert not {problem_key(r.prompt) for r in train} & {problem_key(r.prompt) for r in val}


def test_the_readme_counts_the_mix_as_the_code_does():
    trained = len(mix.TRAIN_WEIGHTS)
    in_val = len({spec.partition("?")[0] for spec in mix.split_weights("val")})  # graph_color twice, one task
    readme = (ROOT / "README.md").read_text()
    assert f"{mix.TRAIN_SIZE:,} problems over {trained} tasks" in readme
    assert f"{mix.VAL_SIZE} validation problems over {in_val} tasks: the {trained} trained" in readme
    assert f"all {trained} offline tasks" in readme


def test_task_sizes_follow_the_weights():
    assert mix.task_sizes({"a": 1.0, "b": 1.0, "c": 2.0}, 8) == {"a": 2, "b": 2, "c": 4}
    assert mix.task_sizes({"a": 1.0, "b": 1.0, "c": 1.0}, 4) == {"a": 2, "b": 1, "c": 1}  # ties: earlier
    assert mix.task_sizes({"a": 1.0, "b": 3.0}, 1) == {"a": 0, "b": 1}
    sizes = mix.task_sizes(mix.split_weights("train"), mix.TRAIN_SIZE)
    assert sum(sizes.values()) == mix.TRAIN_SIZE and max(sizes.values()) - min(sizes.values()) <= 1


def test_the_mix_accounts_for_every_installed_task():
    from reasoning_gym.factory import DATASETS

    used = {spec.partition("?")[0] for spec in (*mix.TRAIN_WEIGHTS, *mix.HELD_OUT)}
    assert used | set(mix.NOT_OFFLINE) == set(DATASETS) and not used & set(mix.NOT_OFFLINE)
    assert "boxnet" not in mix.TRAIN_WEIGHTS and "graph_color" in mix.TRAIN_WEIGHTS


def test_probe_agrees_with_the_mix():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_reasoning_gym.py"), "--check",
                           "--items", "2", "chain_sum", "composite", "boxnet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the mix agrees with the probe" in proc.stdout
    assert "Must specify at least one dataset" in proc.stdout  # composite's recorded reason, re-found


def test_problem_key_normalises_case_space_and_unicode():
    assert problem_key("Find  x if\n2x + 3 = 11.") == problem_key("find x if 2x+3=11.")
    assert problem_key("Compute \uff11\uff12\u00a0+ 3") == problem_key("compute 12 + 3")  # full-width, NBSP
    assert problem_key("What is 1+2?") != problem_key("What is 1-2?")


def test_load_data_holds_val_out_by_normalised_text(tmp_path):
    save_rows([Row("What is  23 + 45?", "math", "68"), Row("What is 10+10?", "math", "20")], tmp_path / "t.jsonl")
    save_rows([Row("what is 23+45?", "math", "68")], tmp_path / "v.jsonl")
    data = load_data(DataConfig(train=[DataSourceConfig(path=str(tmp_path / "t.jsonl"))],
                                val=[DataSourceConfig(path=str(tmp_path / "v.jsonl"))]))
    assert [r.prompt for r in data.train[0].rows] == ["What is 10+10?"]
    assert data.train[0].dropped == {"also in val": 1}


def test_val_and_benchmark_problems_are_removed_from_training(fixtures, tmp_path, capsys):
    # A config whose data.val also names a STEM set, and two benchmark files; each holds one
    # training problem, copied with other case, spacing or Unicode forms.
    stem_val = tmp_path / "stem_val.jsonl"
    save_rows([Row("HOW MANY moles are in 36 g of water?", "stem", "2")], stem_val)
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  val:\n    - {path: '${oc.env:PRORL_DATA}/logic_val.jsonl'}\n"
                      f"    - {{path: '{stem_val}'}}\n")
    aime = tmp_path / "aime.jsonl"
    aime.write_text(json.dumps({"problem": "Find x if 2x + 3 = 11.", "answer": "4"}) + "\n"
                    + json.dumps({"problem": "An unrelated benchmark problem.", "answer": "1"}) + "\n")
    ifeval = tmp_path / "ifeval.jsonl"
    ifeval.write_text(json.dumps({"key": 1, "prompt": "Write a haiku about rain.  Answer with less than 40 words.",
                                  "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}) + "\n")
    out = tmp_path / "out"
    rc, stdout, err = run_prepare(capsys, "--out", out, *local_sources(fixtures), "--config", config,
                                  "--benchmark", f"deepscaler={aime}", "--benchmark", f"llama_nemotron_if={ifeval}",
                                  "--only", "math", "stem", "ifeval", *TINY_LOGIC)
    assert rc == 0, err
    reason = "1 dropped: also in val or a benchmark"
    assert f"math.jsonl: deepscaler.json[math]: 3 rows, 3 bad, {reason}" in stdout
    assert f"ifeval.jsonl: llama_nemotron_if.jsonl[ifeval]: 3 rows, 2 bad, {reason}" in stdout
    assert "stem.jsonl: scp116k.jsonl[stem]: 1 rows, 2 bad, 1 dropped: also in val or a benchmark" in stdout
    assert "held out of training: 6 problems" in stdout  # val: 2 logic, 1 stem; benchmarks: 2 AIME, 1 IFEval
    math = load_source(DataSourceConfig(path=str(out / "math.jsonl"))).rows
    assert "Find x if 2x + 3 = 11." not in {r.prompt for r in math} and len(math) == 3


def test_only_writes_the_named_domains_and_the_val_file(fixtures, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run_prepare(capsys, "--out", out, *local_sources(fixtures), "--only", "math", *TINY_LOGIC)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["logic_val.jsonl", "math.jsonl", "prepared.json"]
    assert set(json.loads((out / "prepared.json").read_text())) == {"logic_val.jsonl", "math.jsonl"}


def test_rerun_skips_finished_files_and_redoes_changed_ones(fixtures, tmp_path, capsys):
    out, math = tmp_path / "out", tmp_path / "deepscaler.json"
    math.write_bytes((fixtures / "deepscaler.json").read_bytes())
    args = ["--out", out, *local_sources(fixtures), "--source", f"math={math}", "--only", "math", "stem", *TINY_LOGIC]
    assert run_prepare(capsys, *args)[0] == 0
    written = {name: (out / name).stat().st_mtime_ns for name in ("logic_val.jsonl", "math.jsonl", "stem.jsonl")}
    rc, stdout, _ = run_prepare(capsys, *args)
    assert rc == 0
    for name in written:
        assert f"{name}: complete already" in stdout and (out / name).stat().st_mtime_ns == written[name]
    records = json.loads(math.read_text())
    math.write_text(json.dumps(records[:2]))  # a new local copy: math is made again, stem is not
    rc, stdout, _ = run_prepare(capsys, *args)
    assert "math.jsonl: deepscaler.json[math]: 2 rows" in stdout and "stem.jsonl: complete already" in stdout
    rc, stdout, _ = run_prepare(capsys, *args[:-1], "3")  # another validation set: everything again
    assert "complete already" not in stdout and "logic_val.jsonl: Reasoning Gym val mix (3 tasks): 3 rows" in stdout


def test_a_failed_write_leaves_no_file(fixtures, tmp_path, capsys, monkeypatch):
    def half_then_fail(rows, path):
        Path(path).write_text("{}\n")
        raise OSError("disk full")

    out = tmp_path / "out"
    monkeypatch.setattr(prep, "save_rows", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        run_prepare(capsys, "--out", out, *local_sources(fixtures), "--only", "math", *TINY_LOGIC)
    assert os.listdir(out) == []  # the val file failed first: nothing, not even a manifest
    monkeypatch.undo()
    assert run_prepare(capsys, "--out", out, *local_sources(fixtures), "--only", "math", *TINY_LOGIC)[0] == 0
    assert sorted(os.listdir(out)) == ["logic_val.jsonl", "math.jsonl", "prepared.json"]


def test_a_killed_run_leaves_no_partial_file_and_resumes(fixtures, tmp_path, capsys):
    # The child is killed (SIGKILL: nothing can clean up) halfway through writing code.jsonl.
    out = tmp_path / "out"
    args = ["--out", str(out), *local_sources(fixtures), "--only", "math", "code", *TINY_LOGIC]
    child = (
        "import os, signal, sys\n"
        "from megatron_prorl.data import prepare\n"
        "real = prepare.save_rows\n"
        "def save_rows(rows, path):\n"
        "    if os.path.basename(path).startswith('.code.'):\n"
        "        real(rows[:1], path)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(rows, path)\n"
        "prepare.save_rows = save_rows\n"
        "from megatron_prorl import cli\n"
        "sys.exit(cli.main(['data', 'prepare'] + sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", child, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "code.jsonl").exists() and (out / ".code.partial.jsonl").exists()
    assert set(json.loads((out / "prepared.json").read_text())) == {"logic_val.jsonl", "math.jsonl"}
    rc, stdout, err = run_prepare(capsys, *args)
    assert rc == 0, err
    assert "math.jsonl: complete already" in stdout and "code.jsonl: eurus2.parquet[code]: 2 rows" in stdout
    assert sorted(os.listdir(out)) == ["code.jsonl", "logic_val.jsonl", "math.jsonl", "prepared.json"]


def test_ctrl_c_is_one_line_and_the_rerun_goes_on(tmp_path):
    """SIGINT to the process group of a real `prorl data prepare` (a terminal's Ctrl-C) while it
    generates the Reasoning Gym training problems: one line, exit code 130, the validation file
    kept and recorded, no partial file; the rerun skips what is done."""
    from helpers.runs import ctrl_c, prorl, wait_for

    out = tmp_path / "out"
    proc = prorl("data", "prepare", "--out", out, "--only", "logic", "--logic-train-size", "3000",
                 "--logic-val-size", "2")
    manifest = out / prep.MANIFEST
    wait_for(lambda: manifest.exists() and "logic_val.jsonl" in manifest.read_text(), proc, what="the val file")
    ctrl_c(proc, "prorl data prepare: interrupted; the files finished so far are kept (--out's prepared.json) "
                 "and the same command goes on")
    assert sorted(os.listdir(out)) == ["logic_val.jsonl", "prepared.json"]  # no partial logic.jsonl
    proc = prorl("data", "prepare", "--out", out, "--only", "logic", *TINY_LOGIC)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text[-3000:]
    assert "logic_val.jsonl: complete already" in text and (out / "logic.jsonl").is_file()


def test_without_network_the_hub_fails_fast_naming_the_source_flag(tmp_path, capsys, monkeypatch):
    """No hub (a closed port stands in for a machine without network): one line within seconds,
    not half a minute of retries, pointing at --source DOMAIN=PATH."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    started = time.monotonic()
    rc, _, err = run_prepare(capsys, "--out", tmp_path / "out", "--only", "math", *TINY_LOGIC)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - started < 20
    assert ("math source hf:agentica-org/DeepScaleR-Preview-Dataset: the Hugging Face hub cannot be reached "
            "(127.0.0.1:9: Connection refused)") in err, err
    assert "give a local copy with --source math=PATH" in err, err


def test_the_val_file_is_written_only_when_the_config_reads_it(fixtures, tmp_path, capsys):
    config = tmp_path / "no_val.yaml"
    config.write_text("data:\n  train: [{path: arithmetic:add}]\n")
    out = tmp_path / "out"
    rc, stdout, err = run_prepare(capsys, "--out", out, *local_sources(fixtures), "--only", "math", "--config", config,
                                  *TINY_LOGIC)
    assert rc == 0, err
    assert "logic_val.jsonl: not written (the config's data.val does not read it)" in stdout
    assert sorted(os.listdir(out)) == ["math.jsonl", "prepared.json"]


def test_a_hub_dataset_is_read_through_datasets(fixtures, tmp_path, capsys, monkeypatch):
    # A dataset directory stands in for the hub: datasets.load_dataset reads it the same way.
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    repo = tmp_path / "DeepScaleR-Preview-Dataset"
    repo.mkdir()
    records = [r for r in json.loads((fixtures / "deepscaler.json").read_text())[:4]]
    (repo / "deepscaler.jsonl").write_text("".join(json.dumps(dict(r, answer=str(r["answer"]))) + "\n"
                                                   for r in records))
    out = tmp_path / "out"
    rc, stdout, err = run_prepare(capsys, "--out", out, "--source", f"math=hf:{repo}?split=train", "--only", "math",
                                  *TINY_LOGIC)
    assert rc == 0, err
    assert f"math.jsonl: hf:{repo}?split=train[math]: 4 rows" in stdout
    rows = load_source(DataSourceConfig(path=str(out / "math.jsonl"))).rows
    assert [r.id for r in rows] == [f"DeepScaleR-Preview-Dataset#{i}" for i in range(4)]
    rc, _, err = run_prepare(capsys, "--out", out, "--source", f"math=hf:{repo}?config=x", "--only", "math",
                             *TINY_LOGIC)
    assert rc == 2 and "got unknown option(s) ['config']" in err and len(err.splitlines()) == 1


def test_default_sources_are_the_public_datasets():
    public = {d: domains.get(d).prepare for d in prep.default_domains() if domains.get(d).prepare.source}
    assert {d: p.format for d, p in public.items()} == {
        "math": "deepscaler", "code": "eurus2", "stem": "scp116k", "ifeval": "llama_nemotron_if"}
    assert public["ifeval"].source.endswith("?name=RL&split=instruction_following")
    assert prep.default_domains() == ("math", "code", "stem", "ifeval", "logic")


def bad_file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", ["domain", "source_domain", "logic_source", "missing", "bad_json", "bad_parquet",
                                  "no_rows", "benchmark_format", "pair", "size"])
def test_bad_input_is_one_line_naming_it(fixtures, tmp_path, capsys, case):
    missing = tmp_path / "nope" / "deepscaler.json"
    args, expected = {
        "domain": (["--only", "chemistry"], "--only chemistry: unknown domain"),
        "source_domain": (["--source", "chemistry=x.json"], "--source chemistry=x.json: unknown domain"),
        "logic_source": (["--source", "logic=x.json"], "--source logic=x.json: logic is generated"),
        "missing": (["--source", f"math={missing}"], f"no such file or directory: {missing}"),
        "bad_json": (["--source", f"math={bad_file(tmp_path, 'd.json', b'[{oops')}"], f"{tmp_path / 'd.json'}"),
        "bad_parquet": (["--source", f"code={bad_file(tmp_path, 'e.parquet', b'not parquet')}"],
                        f"code source {tmp_path / 'e.parquet'}: Arrow"),
        "no_rows": (["--source", f"stem={bad_file(tmp_path, 's.jsonl', b'{}')}"], "no usable rows"),
        "benchmark_format": (["--benchmark", "aime=x.jsonl"], "--benchmark aime=x.jsonl: unknown format 'aime'"),
        "pair": (["--source", "math"], "--source math: expected KEY=VALUE"),
        "size": (["--logic-val-size", "0"], "--logic-val-size 0: must be >= 1"),
    }[case]
    out = tmp_path / "out"
    rc, _, err = run_prepare(capsys, "--out", out, *local_sources(fixtures), "--only", "math", "code", "stem",
                             *TINY_LOGIC, *args)  # the later of a repeated flag wins
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("prorl: error: ") and expected in err, err
    if out.exists():
        assert not [p for p in os.listdir(out) if p.startswith(".")]
