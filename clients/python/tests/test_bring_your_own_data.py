"""The README's "Bring your own data" example, end to end: three hospitals
load their own exports of a public data set (442 diabetes patients,
scikit-learn's copy) with `kexin dataset add`, and a researcher's gated
answers per hospital equal pandas on the same rows."""

import importlib.util
import json
import os
import pathlib
import subprocess

from conftest import kexin_bin

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "docs" / "examples" / "diabetes"


def hospitals():
    spec = importlib.util.spec_from_file_location("prepare", EXAMPLE / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.hospitals()


def test_three_hospitals_load_a_public_data_set_and_answer_as_pandas(tmp_path):
    space = tmp_path / "space"
    run = subprocess.run(
        ["bash", str(EXAMPLE / "run.sh"), str(space), kexin_bin()],
        env={**os.environ, "KEXIN_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    answers = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"status"')]
    assert len(answers) == 3, run.stdout
    parts = hospitals()
    for node, answer in zip(["h1", "h2", "h3"], answers):
        assert answer["status"] == "released", answer
        expect = (
            parts[node]
            .groupby("sex")
            .agg(patients=("mrn", "count"), bmi=("bmi", "mean"), progression=("progression", "mean"))
            .reset_index()
        )
        got = answer["rows"]
        assert [r[0] for r in got] == list(expect["sex"]), (node, got)
        for row, (_, e) in zip(got, expect.iterrows()):
            assert row[1] == e["patients"], (node, row)
            assert row[2] == round(e["bmi"], 2), (node, row)
            assert row[3] == round(e["progression"], 2), (node, row)
    # Every node's copy is listed with its digest, and the digest is what
    # the query's audit entry binds.
    listed = subprocess.run(
        [kexin_bin(), "dataset", "show", "--space", str(space), "--node", "h3",
         "--dataset", "diabetes", "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    loaded = json.loads(listed.stdout)
    assert loaded["rows"] == len(parts["h3"]) and loaded["persons"] == len(parts["h3"])
    assert loaded["columns"]["visit"] == "date" and loaded["columns"]["mrn"] == "text"
    log = subprocess.run(
        [kexin_bin(), "audit", "list", "--space", str(space), "--node", "h3", "--local"],
        capture_output=True, text=True, check=True,
    )
    entries = [json.loads(line) for line in log.stdout.splitlines() if line.startswith("{")]
    assert entries[-1]["kind"] == "query"
    assert entries[-1]["data"] == {"diabetes": loaded["sha256"]}
