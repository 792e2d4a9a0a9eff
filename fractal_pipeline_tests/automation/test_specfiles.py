"""Spec files: the malformed-input corpus gives its documented outcome; parsing never raises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fractal_pipeline.fractals import KINDS, MAX_SIZE, MIN_SIZE, PALETTES, FractalSpec
from fractal_pipeline.specfiles import MAX_BYTES, MAX_ROWS, MAX_VALUE_CHARS, file_format, parse_spec_file

CORPUS = Path(__file__).parents[1] / "data" / "bad_specs"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())["files"]
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def test_manifest_documents_every_corpus_file() -> None:
    on_disk = {p.name for p in CORPUS.iterdir()} - {"manifest.json"}
    assert len(on_disk) >= 30
    assert on_disk == set(MANIFEST)
    for name, entry in MANIFEST.items():
        assert entry["outcome"], name
        assert entry["error"] is None or not entry["keys"], name  # a refused file gives nothing


@pytest.mark.reliability("hostile input", "malformed spec-file corpus (50 files): each gives its documented outcome")
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_file_gives_documented_outcome(name: str) -> None:
    expected = MANIFEST[name]
    result = parse_spec_file(name, (CORPUS / name).read_bytes())
    if expected["error"] is None:
        assert result.error is None, result.error
    else:
        assert result.error is not None and expected["error"] in result.error
        assert "\n" not in result.error
        assert result.error.split(":")[0] in {"file", "header", "specs"}  # names what to fix
    assert result.keys == expected["keys"]
    assert [
        [row.line, row.reason[: len(reason)]]
        for row, (_, reason) in zip(result.rejected, expected["rejected"], strict=False)
    ] == [[line, reason] for line, reason in expected["rejected"]]
    assert len(result.rejected) == len(expected["rejected"])
    for row in result.rejected:
        assert "\n" not in row.reason and "\n" not in row.value
        assert len(row.value) <= MAX_VALUE_CHARS
    assert result.clean == (expected["error"] is None and not expected["rejected"])
    json.dumps(result.report())  # the report object is plain JSON


def test_limits_are_inclusive_and_checked_before_parsing() -> None:
    rows = "kind,depth\n" + "".join(f"dragon,{i % 23}\n" for i in range(MAX_ROWS))
    at_limit = parse_spec_file("max.csv", rows.encode())
    assert at_limit.error is None and at_limit.rows == MAX_ROWS and len(at_limit.keys) == 23
    assert len(at_limit.rejected) == MAX_ROWS - 23  # the repeats, each reported once
    over = parse_spec_file("over.csv", (rows + "dragon,1\n").encode())
    assert over.error is not None and "more than 10,000 rows" in over.error

    huge = b"kind,depth\n" + b"dragon,1\n" * (MAX_BYTES // 9 + 1)
    assert len(huge) > MAX_BYTES
    result = parse_spec_file("huge.csv", huge)
    assert result.error is not None and "over the 5 MB limit" in result.error and result.rows == 0


def test_line_numbers_point_at_the_row_start() -> None:
    text = 'kind,depth,palette\n\ndragon,4,\n"levy\n_c",3,\n\ndragn,2,\n'
    result = parse_spec_file("lines.csv", text.encode())
    assert [(row.line, row.reason.split(":")[0]) for row in result.rejected] == [(4, "kind"), (7, "kind")]
    assert result.rejected[0].value == "levy\\n_c,3,"  # the newline is shown escaped, on one line
    doc = '{\n "specs": [\n  {"kind": "dragon", "depth": 4},\n\n  {"kind": "dragon",\n   "depth": 99}\n ]\n}'
    json_result = parse_spec_file("lines.json", doc.encode())
    assert json_result.keys == ["dragon_4"]
    assert [row.line for row in json_result.rejected] == [5]


@pytest.mark.parametrize("name", ["specs.csv", "specs.json"])
def test_example_files_are_clean(name: str) -> None:
    path = Path(__file__).parents[2] / "examples" / name
    result = parse_spec_file(name, path.read_bytes())
    assert result.clean and len(result.keys) == 5
    assert result.keys[:2] == ["dragon_12", "koch_snowflake_4-512px-ice"]


def test_format_comes_from_the_extension() -> None:
    assert file_format("specs/a.CSV") == "csv"
    assert file_format("specs/b.Json") == "json"
    assert file_format("specs/c.csv.bak") is None
    body = b'[{"kind": "dragon", "depth": 3}]'
    assert parse_spec_file("x.json", body).keys == ["dragon_3"]
    assert parse_spec_file("x.csv", body).error is not None


@st.composite
def spec_lists(draw: st.DrawFn) -> list[FractalSpec]:
    kinds = st.sampled_from(sorted(KINDS))
    out = []
    for kind in draw(st.lists(kinds, min_size=1, max_size=12)):
        depth = draw(st.integers(0, min(KINDS[kind].max_depth, 9)))
        size = draw(st.sampled_from([MIN_SIZE, 64, 1024, MAX_SIZE]))
        palette = draw(st.sampled_from(sorted(PALETTES)))
        out.append(FractalSpec(kind, depth, size, palette))
    return out


@FAST
@given(spec_lists(), st.booleans(), st.booleans())
def test_written_specs_parse_back(specs: list[FractalSpec], crlf: bool, bom: bool) -> None:
    end = "\r\n" if crlf else "\n"
    csv_text = "kind,depth,size,palette" + end + "".join(f"{s.kind},{s.depth},{s.size},{s.palette}{end}" for s in specs)
    prefix = b"\xef\xbb\xbf" if bom else b""
    unique = list(dict.fromkeys(s.key for s in specs))
    assert parse_spec_file("a.csv", prefix + csv_text.encode()).keys == unique
    json_text = json.dumps({"specs": [s.as_dict() for s in specs]}, indent=2 if crlf else None)
    assert parse_spec_file("a.json", prefix + json_text.encode()).keys == unique


@FAST
@given(st.binary(max_size=400), st.sampled_from(["a.csv", "a.json", "a.txt"]))
def test_arbitrary_bytes_never_raise(data: bytes, name: str) -> None:
    result = parse_spec_file(name, data)
    assert result.error is not None or result.specs or result.rejected or result.rows == 0


@FAST
@given(st.text(alphabet=st.sampled_from('kinddepthsz,"\n\r 0123456789-[]{}:dragonlevy_c'), max_size=200))
def test_near_miss_text_never_raises(text: str) -> None:
    for name in ("t.csv", "t.json"):
        result = parse_spec_file(name, text.encode())
        for row in result.rejected:
            assert row.line >= 1 and row.reason


def test_parser_imports_neither_dagster_nor_boto3() -> None:
    code = (
        "import sys, fractal_pipeline.specfiles, fractal_pipeline.defs.batch_plan; "
        "bad = [m for m in ('dagster', 'boto3') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
