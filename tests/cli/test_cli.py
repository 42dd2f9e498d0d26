"""The `inf590k` command line: help everywhere, clear one-line errors, the main chain."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def all_commands(group=main, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize("path", list(all_commands()), ids=lambda p: " ".join(p))
def test_every_command_has_help(path):
    result = invoke(*path, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output and len(result.output.splitlines()) > 3


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and "inf590k, version" in result.output


def test_sources_list_and_show():
    listing = invoke("sources", "list")
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert lines[0].split()[:5] == ["id", "name", "count", "license", "modality"]
    assert len(lines) >= 23 + 1  # 22 public sources + folder + header
    shown = invoke("sources", "show", "llvip")
    assert shown.exit_code == 0 and "include:" in shown.output
    missing = invoke("sources", "show", "nope")
    assert missing.exit_code == 1 and "sources list" in missing.output


def test_malformed_user_manifest_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: mine\nname: Mine\nmodality: radar\n")
    result = invoke("sources", "list", "--manifest", bad)
    assert result.exit_code == 1
    assert "bad.yaml" in result.output and "modality" in result.output and "Fix" in result.output


def test_synth_then_ingest_accounts_for_every_file(tmp_path):
    synth = invoke("synth", "--layout", "roadscene", "--out", tmp_path / "rs", "--count", 12, "--scale", 0.5)
    assert synth.exit_code == 0, synth.output
    result = invoke("ingest", "--source", f"roadscene={tmp_path / 'rs'}", "--build", tmp_path / "b", "--workers", 1)
    assert result.exit_code == 0, result.output
    files = [p for p in (tmp_path / "rs").rglob("*") if p.is_file()]
    table = pq.read_table(tmp_path / "b" / "catalog")
    assert table.num_rows == len(files)
    assert f"found {len(files)} = ok 12 + excluded {len(files) - 12} + rejected 0" in result.output


def test_ingest_errors_are_clear(tmp_path):
    result = invoke("ingest", "--source", "nosuch=" + str(tmp_path), "--build", tmp_path / "b")
    assert result.exit_code == 1 and "unknown source id 'nosuch'" in result.output
    result = invoke("ingest", "--source", "folder=" + str(tmp_path / "absent"), "--build", tmp_path / "b")
    assert result.exit_code == 1 and "does not exist" in result.output
    result = invoke("ingest", "--source", "just-a-path", "--build", tmp_path / "b")
    assert result.exit_code == 2 and "ID=PATH" in result.output
    result = invoke("ingest", "--source", f"folder={tmp_path}", "--build", tmp_path / "b", "--stretch", "9,2")
    assert result.exit_code == 2 and "LOW < HIGH" in result.output


def test_synth_rejects_bad_options(tmp_path):
    result = invoke("synth", "--layout", "kaist", "--out", tmp_path / "k", "--bit-depth", "16")
    assert result.exit_code == 1 and "16" in result.output and result.output.count("\n") == 1


def test_console_script_is_installed():
    import shutil
    import sys

    bindir = Path(sys.executable).parent
    assert shutil.which("inf590k", path=str(bindir)) is not None


def test_pretrain_options_map_one_to_one_to_config_fields():
    from cli.model import build_pretrain_command
    from pretrain.config import option_fields

    command = build_pretrain_command()
    option_names = {param.name for param in command.params}
    assert option_names == {field.name for _, field in option_fields()}


def test_model_info_agrees_with_the_analytic_mae_cost():
    result = invoke("model-info", "mae_vit_base")
    assert result.exit_code == 0
    total = next(line for line in result.output.splitlines() if line.startswith("total"))
    gflops = float(total.split()[2])
    assert abs(gflops - 19.6) / 19.6 < 0.05
    assert invoke("model-info", "nope").exit_code == 1


def test_build_verify_report_chain_and_verify_failure(tmp_path, ir_samples):
    synth = invoke("synth", "--layout", "sirst", "--out", tmp_path / "sirst", "--count", 10, "--scale", 0.5)
    assert synth.exit_code == 0, synth.output
    result = invoke("build", "--build", tmp_path / "b", "--out", tmp_path / "ds", "--workers", 1,
                    "--source", f"sirst={tmp_path / 'sirst'}", "--source", f"roadscene={ir_samples / 'roadscene'}")
    assert result.exit_code == 0, result.output
    assert "build: " in result.output and "samples in" in result.output
    assert invoke("verify", tmp_path / "ds").exit_code == 0
    reported = invoke("report", tmp_path / "ds")
    assert reported.exit_code == 0 and (tmp_path / "ds" / "metadata" / "report" / "report.json").exists()
    tar = sorted((tmp_path / "ds").rglob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    broken = CliRunner().invoke(main, ["verify", str(tmp_path / "ds")])
    assert broken.exit_code == 1 and tar.name in broken.output


def test_bin_rejects_decreasing_edges(tmp_path):
    result = invoke("bin", "--build", tmp_path, "--short-edges", "512,256")
    assert result.exit_code == 2 and "increase" in result.output


def test_shard_refuses_to_write_into_the_build_folder(tmp_path, ir_samples):
    built = invoke("build", "--build", tmp_path / "b", "--out", tmp_path / "ds", "--workers", 1,
                   "--source", f"sirst={ir_samples / 'sirst'}")
    assert built.exit_code == 0, built.output
    result = invoke("shard", "--build", tmp_path / "b", "--out", tmp_path / "b", "--workers", 1)
    assert result.exit_code == 1 and "build folder" in result.output
    assert list((tmp_path / "b" / "catalog").glob("part-*.parquet"))


def test_verify_reports_a_damaged_index_in_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "metadata").mkdir()
    (tmp_path / "data" / "_info.json").write_text("{bad")
    (tmp_path / "metadata" / "SHA256SUMS").write_text("")
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "index files unreadable" in result.output
    assert "Traceback" not in result.output


def test_build_names_sources_kept_from_earlier_runs(tmp_path):
    for layout in ("sirst", "roadscene"):
        assert invoke("synth", "--layout", layout, "--out", tmp_path / layout, "--count", 6, "--scale", 0.4).exit_code == 0
    common = ["build", "--build", tmp_path / "b", "--out", tmp_path / "ds", "--workers", 1]
    assert invoke(*common, "--source", f"sirst={tmp_path / 'sirst'}",
                  "--source", f"roadscene={tmp_path / 'roadscene'}").exit_code == 0
    again = invoke(*common, "--source", f"sirst={tmp_path / 'sirst'}")
    assert again.exit_code == 0 and "includes sources of earlier runs: roadscene" in again.output
