"""Inputs that used to escape as a traceback (issue 20, item 9): each is one line, exit code 2,
naming the file or key at fault."""

from __future__ import annotations

import pytest
from helpers.runs import prorl_fails, write_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_a_yaml_file_whose_top_level_is_a_list(tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- model\n- optim\n")
    line = prorl_fails("train", config)
    assert f"{config}: the top level is a list, not a mapping of sections" in line, line


def test_a_binary_file_as_config(tmp_path):
    config = tmp_path / "model.safetensors"
    config.write_bytes(bytes(range(256)) * 4)
    line = prorl_fails("train", config)
    assert f"{config}: not a YAML text file (not UTF-8 at byte" in line, line


def test_an_output_dir_naming_a_file(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("not a directory\n")
    line = prorl_fails("train", write_config(tmp_path, trainer__output_dir=str(blocker / "sub")))
    assert f"trainer.output_dir={blocker / 'sub'}: {blocker} is a file, not a directory" in line, line
    line = prorl_fails("train", write_config(tmp_path, trainer__output_dir=str(blocker)))
    assert f"trainer.output_dir={blocker}: {blocker} is a file, not a directory" in line, line


def test_a_data_path_naming_an_empty_directory(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    line = prorl_fails("train", write_config(tmp_path, data__train=[{"path": str(empty)}]))
    assert f"{empty}: a directory, but not a saved datasets directory" in line, line


def test_plot_of_a_binary_metrics_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b"\x00\x99\xff" * 100)
    line = prorl_fails("plot", tmp_path, command="prorl plot", alone=True)
    assert f"{tmp_path / 'metrics.jsonl'}: not a metrics file (not UTF-8 text at byte 1)" in line, line
