"""Golden cases (shared/golden): real Prefect 3.9.1 captures as test data.

Every case goes through the in-memory pipeline and through the `prefect-events process` CLI, and
must equal expected.jsonl whole events after compare.py's normalisation; every id is checked
separately (valid UUID, UUIDv7 layout, first 48 bits = occurred in milliseconds).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import spec_helpers as h

from streams.pipeline import ArtifactPipeline, AssetPipeline

CASES = h.golden_cases() or ["<golden cases missing>"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    h.require_golden()
    return h.load_compare()


def _stream(case: str) -> str:
    first = json.loads(h.golden_lines(case, "input.jsonl")[0])
    return "artifacts" if "op" in first else "assets"


def _check(compare, case: str, actual: list[dict]) -> None:
    expected = h.read_jsonl(h.GOLDEN_DIR / case / "expected.jsonl")
    for event in actual:
        h.check_event_id(event)
        assert compare.check_id(event) is None
        assert list(event) == h.ENVELOPE_KEYS
    want, got = compare.normalise(expected), compare.normalise(actual)
    assert len(got) == len(want), [e["event"] for e in got]
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g == w, f"{case}: event {i} differs"


@pytest.mark.parametrize("case", CASES)
def test_golden_case_through_pipeline(compare, case):
    pipeline = ArtifactPipeline() if _stream(case) == "artifacts" else AssetPipeline()
    actual = []
    for number, raw in enumerate(h.golden_lines(case, "input.jsonl"), start=1):
        outcome = pipeline.process(raw)
        assert outcome.dead_letter is None, f"line {number}: {outcome.dead_letter}"
        actual.extend(json.loads(e.value) for e in outcome.events)
    _check(compare, case, actual)


@pytest.mark.parametrize("case", CASES)
def test_golden_case_through_cli(compare, case):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "topology.cli",
            "process",
            "--stream",
            _stream(case),
            str(h.GOLDEN_DIR / case / "input.jsonl"),
        ],
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()  # no dead letters
    lines = [line for line in proc.stdout.split(b"\n") if line]
    _check(compare, case, [json.loads(line) for line in lines])


@pytest.mark.parametrize("case", CASES)
def test_golden_case_cli_and_pipeline_give_the_same_bytes(compare, case):
    """The offline CLI runs the same code: byte-identical output, ids included."""
    stream = _stream(case)
    pipeline = ArtifactPipeline() if stream == "artifacts" else AssetPipeline()
    expected = b"".join(
        e.value + b"\n" for raw in h.golden_lines(case, "input.jsonl") for e in pipeline.process(raw).events
    )
    proc = subprocess.run(
        [sys.executable, "-m", "topology.cli", "process", "--stream", stream, "-"],
        input=(h.GOLDEN_DIR / case / "input.jsonl").read_bytes(),
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    assert proc.stdout == expected


def test_cli_reports_dead_letters_with_line_numbers(tmp_path):
    good = json.dumps(h.create(h.uid(1), key=None))
    bad = "{not json"
    missing = json.dumps(h.delete(drop=["artifact_id"]))
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([good, bad, "", missing]) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "topology.cli", "process", "--stream", "artifacts", str(path)],
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0
    assert [json.loads(line)["event"] for line in proc.stdout.splitlines()] == [
        "prefect.artifact.created"
    ]
    rejects = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [r["line"] for r in rejects] == [2, 4]
    assert rejects[0]["reason"].startswith("invalid_json: ")
    assert rejects[1]["reason"] == "missing_field: artifact_id is missing"
