"""The `dlgraph` command on the scripted backend; config errors name the key and file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from metric_plugin import install_metric_plugin

from dlgraph.cli import main

SIM_CONFIG = """
[backend]
name = "sim"

[data]
source = "generated"
task = "navigation"
train = 12
dev = 6
test = 6

[train]
steps = 2
batch_size = 4
num_prompt_samples = 2
num_hidden_samples = 1

[output]
dir = "out"
"""


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_train_writes_network_history_and_plot(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG)
    assert main(["train", str(config), "--plot", str(tmp_path / "curve.png")]) == 0
    out = capsys.readouterr().out
    assert "accuracy before and after training" in out and "test" in out
    saved = json.loads((tmp_path / "out" / "network.json").read_text())
    assert saved["nodes"][0]["name"] == "answer"
    steps = (tmp_path / "out" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in steps] == [1, 2]
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_resume_extends_a_finished_run_and_refuses_another_setup(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG)
    assert main(["train", str(config)]) == 0
    other = write(tmp_path, SIM_CONFIG.replace("batch_size = 4", "batch_size = 3"))
    assert main(["train", str(other), "--resume"]) == 2  # another setup: refused, not mixed
    assert "written for another setup" in capsys.readouterr().out
    longer = write(tmp_path, SIM_CONFIG.replace("steps = 2", "steps = 3"))
    assert main(["train", str(longer), "--resume"]) == 0
    steps = (tmp_path / "out" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in steps] == [1, 2, 3]


def test_train_writes_a_result_file_that_says_what_the_run_measured(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG)
    assert main(["train", str(config), "--no-probe"]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    ledger = result["by_model"]["forward"]
    assert result["steps"] == 2 and result["stopped"] == "steps"
    assert set(result["before"]) == set(result["after"]) == {"dev", "test"}
    assert result["calls"] == ledger["calls"] > 0
    assert result["tokens"] == ledger["tokens_in"] + ledger["tokens_out"]
    assert f"{result['after']['test']:.3f}" in capsys.readouterr().out


def test_set_overrides_config_values_as_the_file_would(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG)
    settings = ["--set", "train.steps=3", "--set", 'output.dir="elsewhere"', "--set", "data.dev=4"]
    assert main(["train", str(config), "--no-probe", *settings]) == 0
    result = json.loads((tmp_path / "elsewhere" / "result.json").read_text())
    assert result["steps"] == 3
    assert not (tmp_path / "out").exists()


def test_unknown_key_names_key_and_file(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG.replace("steps = 2", "stepz = 2"))
    assert main(["estimate", str(config)]) == 2
    assert "run.toml: [train] unknown key 'stepz'" in capsys.readouterr().out


def test_wrong_type_names_key_and_file(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG.replace("batch_size = 4", 'batch_size = "four"'))
    assert main(["train", str(config)]) == 2
    assert "run.toml: [train] batch_size: expected int, got 'four'" in capsys.readouterr().out


def test_unknown_backend_lists_installed_ones(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG.replace('name = "sim"', 'name = "gpt9"'))
    assert main(["train", str(config)]) == 2
    assert "unknown backend 'gpt9' (known:" in capsys.readouterr().out


def test_unknown_generated_task_is_named(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG.replace('task = "navigation"', 'task = "chess"'))
    assert main(["eval", str(config)]) == 2
    assert "[data] task: unknown generated task 'chess'" in capsys.readouterr().out


def test_yaml_config_is_accepted(tmp_path, capsys) -> None:
    yaml_text = (
        "backend: {name: sim}\ndata: {source: generated, task: dates, train: 4, dev: 4, test: 4}\n"
    )
    config = write(tmp_path, yaml_text, "run.yaml")
    assert main(["eval", str(config)]) == 0
    assert "dates test accuracy" in capsys.readouterr().out


def test_estimate_prints_calls_tokens_and_the_projected_wall_time(tmp_path, capsys) -> None:
    assert main(["estimate", str(write(tmp_path, SIM_CONFIG))]) == 0
    out = capsys.readouterr().out
    assert "2 steps of batch 4: at most" in out
    assert "projected wall time: about" in out and "forward score" in out
    assert main(["estimate", "--no-probe", str(write(tmp_path, SIM_CONFIG))]) == 0
    assert "projected" not in capsys.readouterr().out


def test_train_prints_the_projected_wall_time_before_it_starts(tmp_path, capsys) -> None:
    assert main(["train", str(write(tmp_path, SIM_CONFIG))]) == 0
    out = capsys.readouterr().out
    assert out.index("projected wall time") < out.index("step 1:")


def test_show_prints_prompts_mermaid_and_history(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG)
    main(["train", str(config)])
    capsys.readouterr()
    assert main(["show", str(tmp_path / "out" / "network.json")]) == 0
    out = capsys.readouterr().out
    assert "flowchart TD" in out and "history" in out and "answer" in out


def test_paper_task_config_uses_the_shared_data(tmp_path, capsys) -> None:
    config = write(
        tmp_path,
        SIM_CONFIG.replace(
            'source = "generated"\ntask = "navigation"', 'source = "paper"\ntask = "subj"'
        ),
    )
    assert main(["eval", str(config)]) == 0
    assert "subj test accuracy" in capsys.readouterr().out


def test_command_is_installed_as_a_script() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dlgraph"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "train" in result.stdout


def test_show_skips_a_step_record_cut_short_by_a_kill(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG)
    assert main(["train", str(config)]) == 0
    log = tmp_path / "out" / "steps.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "batch_lo')
    capsys.readouterr()
    assert main(["show", str(tmp_path / "out" / "network.json")]) == 0
    out = capsys.readouterr().out
    assert "steps.jsonl:3: not a whole step record; skipped" in out and "history" in out


def test_a_backward_section_trains_with_two_models_and_reports_both(tmp_path, capsys) -> None:
    text = SIM_CONFIG.replace("[train]", '[backward]\nname = "sim"\nmax_calls = 10000\n\n[train]')
    assert main(["train", str(write(tmp_path, text))]) == 0
    out = capsys.readouterr().out
    assert "calls by model and phase" in out
    rows = [line for line in out.splitlines() if line.strip("│ ").startswith("backward")]
    assert any("propose" in row for row in rows)
    assert not any("score" in row for row in rows)  # log-likelihoods stay on the forward model
    assert main(["estimate", str(write(tmp_path, text))]) == 0
    assert "on the backward model" in capsys.readouterr().out


def test_eval_prints_a_per_class_report_after_the_score(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG)
    assert main(["eval", str(config)]) == 0
    out = capsys.readouterr().out
    assert "navigation test accuracy" in out
    assert "answer: per class (rows: target, columns: predicted)" in out
    assert "precision" in out and "recall" in out


def test_a_config_metric_reaches_the_step_log_the_result_and_the_report(tmp_path, capsys) -> None:
    config = write(tmp_path, SIM_CONFIG.replace("[train]", '[train]\nmetric = "token_f1"'))
    assert main(["train", str(config), "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "metric token_f1 before and after training" in out
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["metric"] == "token_f1"
    steps = (tmp_path / "out" / "steps.jsonl").read_text().splitlines()
    assert {json.loads(line)["metric"] for line in steps} == {"token_f1"}
    assert main(["eval", str(config), "--set", 'train.metric="contains"']) == 0
    assert "navigation test metric contains" in capsys.readouterr().out


def test_a_failing_metric_stops_a_resumed_run_in_one_line_leaving_its_networks(
    tmp_path, capsys, monkeypatch
) -> None:
    install_metric_plugin(tmp_path, monkeypatch)
    config = write(tmp_path, SIM_CONFIG.replace("[train]", '[train]\nmetric = "fragile"'))
    assert main(["train", str(config), "--no-probe"]) == 0
    out = tmp_path / "out"
    kept = {
        path: path.read_bytes() for path in (out / "network.json", out / "checkpoint" / "best.json")
    }
    monkeypatch.setenv("FRAGILE", "1")
    longer = write(tmp_path, config.read_text().replace("steps = 2", "steps = 3"))
    assert main(["train", str(longer), "--resume", "--no-probe"]) == 2
    error = capsys.readouterr().out.strip().splitlines()[-1]
    # the resumed run keeps its scores before training: the metric first fails in step 3
    assert re.match(r"error: metric 'fragile' on evaluation data\[\d+\] \(input ", error)
    assert error.endswith("returned nan; a metric returns a finite number (higher is better)")
    assert {path: path.read_bytes() for path in kept} == kept
