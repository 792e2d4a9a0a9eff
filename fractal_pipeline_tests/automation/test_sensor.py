"""The fractal_spec_files sensor against moto's S3 server on 127.0.0.1 over HTTP, tick by tick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster_aws.s3.sensor import get_objects

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs.jobs import RENDER_JOB_NAME
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.defs.resources import FractalStoreResource
from fractal_pipeline.defs.schedules import RENDER_AFTER_SCHEDULE_NAME, SCHEDULE_NAME
from fractal_pipeline.defs.sensors import cursor as sensor_cursor
from fractal_pipeline.defs.sensors.collage import COLLAGE_SENSOR_NAME
from fractal_pipeline.defs.sensors.cursor import SENSOR_NAME, SETTLE_SECONDS, SpecFilesCursor
from fractal_pipeline.defs.sensors.spec_files import evaluate_spec_files, spec_files_sensor
from fractal_pipeline.store import StoreError

from ..conftest import s3_client

pytestmark = pytest.mark.s3
CORPUS = Path(__file__).parents[1] / "data" / "bad_specs"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())["files"]
AWS = Path(sys.executable).parent / "aws"


class FakeDaemon:
    """Does with each SensorResult what the sensor daemon does: add partitions, store the cursor,
    and launch a run per run request whose run_key it has not seen."""

    def __init__(self, instance: dg.DagsterInstance, env: Mapping[str, str], cursor: str | None = None) -> None:
        self.instance = instance
        self.store = store_resource(env)
        self.cursor = cursor
        self.launched: dict[str, dg.RunRequest] = {}

    def tick(self, **limits: Any) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources={"store": self.store})
        result = evaluate_spec_files(context, self.store, **limits) if limits else spec_files_sensor()(context)
        assert isinstance(result, dg.SensorResult)
        for request in result.dynamic_partitions_requests or []:
            new = [k for k in request.partition_keys if not self.instance.has_dynamic_partition(PARTITIONS_NAME, k)]
            self.instance.add_dynamic_partitions(PARTITIONS_NAME, new)
        for run in result.run_requests or []:
            assert run.run_key is not None
            self.launched.setdefault(run.run_key, run)
        self.cursor = result.cursor
        return result


def store_resource(env: Mapping[str, str]) -> FractalStoreResource:
    return FractalStoreResource(
        bucket=env["FRACTALS_BUCKET"], endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1"
    )


def put(env: Mapping[str, str], key: str, body: str | bytes) -> str:
    """Upload with boto3; returns the ETag (without quotes)."""
    data = body.encode() if isinstance(body, str) else body
    response = s3_client(env["AWS_ENDPOINT_URL"]).put_object(Bucket=env["FRACTALS_BUCKET"], Key=key, Body=data)
    return str(response["ETag"]).strip('"')


def head(env: Mapping[str, str], key: str) -> dict[str, Any]:
    return dict(s3_client(env["AWS_ENDPOINT_URL"]).head_object(Bucket=env["FRACTALS_BUCKET"], Key=key))


def get_json(env: Mapping[str, str], key: str) -> Any:
    body = s3_client(env["AWS_ENDPOINT_URL"]).get_object(Bucket=env["FRACTALS_BUCKET"], Key=key)["Body"].read()
    return json.loads(body)


def exists(env: Mapping[str, str], key: str) -> bool:
    listed = s3_client(env["AWS_ENDPOINT_URL"]).list_objects_v2(Bucket=env["FRACTALS_BUCKET"], Prefix=key)
    return any(item["Key"] == key for item in listed.get("Contents", []))


def range_keys(instance: dg.DagsterInstance, run: dg.RunRequest) -> list[str]:
    order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    first, last = run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]
    return order[order.index(first) : order.index(last) + 1]


def requested_keys(instance: dg.DagsterInstance, result: dg.SensorResult) -> list[str]:
    return [key for run in result.run_requests or [] for key in range_keys(instance, run)]


CSV = "kind,depth,size\ndragon,4,64\nlevy_c,5,64\nkoch_snowflake,2,64\n"
JSON = json.dumps(
    {"specs": [{"kind": "sierpinski", "depth": 3, "size": 64}, {"kind": "dragon", "depth": 6, "size": 64}]}
)


def test_without_a_bucket_the_sensor_skips_and_says_why(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    store = FractalStoreResource(local_dir=str(tmp_path))
    context = dg.build_sensor_context(instance=instance, resources={"store": store})
    result = spec_files_sensor()(context)
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message is not None and "FRACTALS_BUCKET is unset" in result.skip_message


def test_csv_and_json_files_register_partitions_and_request_one_run_each(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    csv_etag = put(s3_env, "specs/batch.csv", CSV)
    json_etag = put(s3_env, "specs/more/batch.json", JSON)
    daemon = FakeDaemon(instance, s3_env)
    result = daemon.tick()

    assert result.dynamic_partitions_requests is not None
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [
        ["dragon_4-64px", "levy_c_5-64px", "koch_snowflake_2-64px", "sierpinski_3-64px", "dragon_6-64px"]
    ]
    runs = {run.run_key: run for run in result.run_requests}
    assert set(runs) == {f"specs/batch.csv@{csv_etag}", f"specs/more/batch.json@{json_etag}"}
    for run in runs.values():
        assert run.job_name == RENDER_JOB_NAME
    assert range_keys(instance, runs[f"specs/batch.csv@{csv_etag}"]) == [
        "dragon_4-64px",
        "levy_c_5-64px",
        "koch_snowflake_2-64px",
    ]
    assert range_keys(instance, runs[f"specs/more/batch.json@{json_etag}"]) == ["sierpinski_3-64px", "dragon_6-64px"]
    cursor = json.loads(result.cursor or "")
    assert set(cursor["seen"]) == {"specs/batch.csv", "specs/more/batch.json"}
    assert not exists(s3_env, "specs/_rejected/batch.csv.json")  # clean files leave no report

    again = daemon.tick()
    assert again.run_requests == [] and not again.dynamic_partitions_requests
    assert again.skip_reason is not None and "no new spec files" in again.skip_reason.skip_message


def test_a_file_uploaded_with_the_aws_cli_is_picked_up(s3_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    daemon = FakeDaemon(instance, s3_env)
    assert daemon.tick().run_requests == []
    source = CORPUS / "list_mixed.json"
    subprocess.run(
        [
            str(AWS),
            "s3",
            "cp",
            str(source),
            f"s3://{s3_env['FRACTALS_BUCKET']}/specs/cli upload.json",
            "--endpoint-url",
            s3_env["AWS_ENDPOINT_URL"],
            "--only-show-errors",
        ],
        check=True,
        env={**os.environ, **s3_env},
        timeout=60,
    )
    result = daemon.tick()
    assert requested_keys(instance, result) == MANIFEST["list_mixed.json"]["keys"]
    etag = str(head(s3_env, "specs/cli upload.json")["ETag"]).strip('"')
    assert [run.run_key for run in result.run_requests] == [f"specs/cli upload.json@{etag}"]
    report = get_json(s3_env, "specs/_rejected/cli upload.json.json")
    assert [row["line"] for row in report["rejected"]] == [3]
    assert report["etag"] == etag and report["accepted"] == 2


def test_restart_and_re_evaluation_run_each_file_exactly_once(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    put(s3_env, "specs/a.csv", CSV)
    put(s3_env, "specs/b.json", JSON)
    daemon = FakeDaemon(instance, s3_env)
    first = daemon.tick()
    assert len(first.run_requests) == 2

    # re-evaluating the same tick (daemon crashed before storing the cursor): same run keys -> deduplicated
    replay = FakeDaemon(instance, s3_env, cursor=None)
    replayed = replay.tick()
    assert {r.run_key for r in replayed.run_requests} == {r.run_key for r in first.run_requests}
    assert not any(r.partition_keys for r in replayed.dynamic_partitions_requests or [] if r.partition_keys)

    # restart: a new sensor object and context from the stored cursor
    restarted = FakeDaemon(instance, s3_env, cursor=daemon.cursor)
    assert restarted.tick().run_requests == []
    put(s3_env, "specs/c.csv", "kind,depth\nlevy_c,3\n")
    later = restarted.tick()
    assert [r.run_key.split("@")[0] for r in later.run_requests if r.run_key] == ["specs/c.csv"]
    assert restarted.tick().run_requests == []


def test_files_sharing_a_last_modified_second_are_each_handled_once(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    daemon = FakeDaemon(instance, s3_env)
    for attempt in range(5):  # S3 stamps whole seconds; retry if the pair straddles a second boundary
        put(s3_env, f"specs/same-{attempt}-a.csv", "kind,depth\ndragon,3\n")
        first = daemon.tick()
        put(s3_env, f"specs/same-{attempt}-b.csv", "kind,depth\ndragon,2\n")
        a = head(s3_env, f"specs/same-{attempt}-a.csv")["LastModified"]
        b = head(s3_env, f"specs/same-{attempt}-b.csv")["LastModified"]
        second = daemon.tick()
        assert [r.run_key.split("@")[0] for r in first.run_requests if r.run_key] == [f"specs/same-{attempt}-a.csv"]
        assert [r.run_key.split("@")[0] for r in second.run_requests if r.run_key] == [f"specs/same-{attempt}-b.csv"]
        assert daemon.tick().run_requests == []
        if a == b:
            break
    else:
        pytest.fail("could not upload two files within one second")
    assert len(daemon.launched) == attempt * 2 + 2


def test_a_file_whose_upload_finished_late_is_not_dropped(s3_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    # S3 stamps LastModified when an upload starts: a slow upload can be listed after a newer file.
    put(s3_env, "specs/slow.csv", "kind,depth\ndragon,5\n")
    put(s3_env, "specs/fast.csv", "kind,depth\ndragon,6\n")
    client = s3_client(s3_env["AWS_ENDPOINT_URL"])
    listed = {o["Key"]: o for o in get_objects(s3_env["FRACTALS_BUCKET"], "specs/", client=client)}
    assert listed["specs/slow.csv"]["LastModified"] <= listed["specs/fast.csv"]["LastModified"]
    # the cursor as a tick leaves it when its listing had only the fast file
    cursor = SpecFilesCursor().advanced([listed["specs/fast.csv"]])
    daemon = FakeDaemon(instance, s3_env, cursor=cursor.dump())
    result = daemon.tick()
    assert [r.run_key.split("@")[0] for r in result.run_requests if r.run_key] == ["specs/slow.csv"]
    assert daemon.tick().run_requests == []


def test_cursor_forgets_files_older_than_the_settle_window() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    old = {"Key": "specs/old.csv", "ETag": '"1"', "LastModified": now - timedelta(seconds=SETTLE_SECONDS + 60)}
    new = {"Key": "specs/new.csv", "ETag": '"2"', "LastModified": now}
    cursor = SpecFilesCursor().advanced([old]).advanced([new])
    assert set(cursor.seen) == {"specs/new.csv"}
    assert cursor.last_modified == now - timedelta(seconds=SETTLE_SECONDS)
    assert not cursor.is_new(old) and not cursor.is_new(new)
    assert cursor.is_new({**new, "ETag": '"3"'})  # edited in place
    assert SpecFilesCursor.parse(cursor.dump()) == cursor
    assert SpecFilesCursor().advanced([]) == SpecFilesCursor()
    with pytest.raises(ValueError, match=r"cursor: .* is not a fractal_spec_files cursor"):
        SpecFilesCursor.parse("not json")


def test_cursor_keeps_only_the_settle_window_of_uploads(
    s3_env: dict[str, str], instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sensor_cursor, "SETTLE_SECONDS", 1)
    for depth, name in enumerate("abc"):
        put(s3_env, f"specs/{name}.csv", f"kind,depth\ndragon,{depth}\n")
    daemon = FakeDaemon(instance, s3_env)
    assert len(daemon.tick().run_requests) == 3
    time.sleep(2.2)  # the S3 clock (whole seconds) moves past the files + the settle window
    assert daemon.tick().run_requests == []
    cursor = SpecFilesCursor.parse(daemon.cursor)
    assert cursor.seen == {}  # idle: nothing remembered, the watermark alone excludes the old files
    uploaded = max(head(s3_env, f"specs/{n}.csv")["LastModified"] for n in "abc")
    assert cursor.last_modified is not None and cursor.last_modified > uploaded
    assert daemon.tick().run_requests == []
    put(s3_env, "specs/d.csv", "kind,depth\nlevy_c,2\n")
    assert [r.tags["fractal_pipeline/spec_file"] for r in daemon.tick().run_requests] == ["specs/d.csv"]


def test_identical_reupload_is_not_rerun_but_an_edited_file_is(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    etag = put(s3_env, "specs/a.csv", CSV)
    daemon = FakeDaemon(instance, s3_env)
    assert [r.run_key for r in daemon.tick().run_requests] == [f"specs/a.csv@{etag}"]
    assert put(s3_env, "specs/a.csv", CSV) == etag
    assert daemon.tick().run_requests == []
    # even from a reset cursor, the identical file yields the same run key, which the daemon never relaunches
    fresh = FakeDaemon(instance, s3_env).tick()
    assert [r.run_key for r in fresh.run_requests] == [f"specs/a.csv@{etag}"]

    edited = put(s3_env, "specs/a.csv", CSV + "sierpinski,2,64\n")
    result = daemon.tick()
    assert edited != etag
    assert [r.run_key for r in result.run_requests] == [f"specs/a.csv@{edited}"]
    assert [r.partition_keys for r in result.dynamic_partitions_requests or []] == [["sierpinski_2-64px"]]


MIXED = ["unknown_kind.csv", "list_mixed.json", "wrong_types.json", "non_numeric.csv", "duplicated_rows.csv"]
REFUSED = ["binary_junk.csv", "twenty_thousand_rows.csv", "notes.txt", "invalid_json.json", "latin1.csv"]


def test_bad_rows_are_reported_and_never_block_good_rows(
    s3_env: dict[str, str], instance: dg.DagsterInstance, capfd: pytest.CaptureFixture[str]
) -> None:
    for name in [*MIXED, *REFUSED, "only_bad_rows.csv", "header_only.csv"]:
        put(s3_env, f"specs/corpus/{name}", (CORPUS / name).read_bytes())
    daemon = FakeDaemon(instance, s3_env)
    result = daemon.tick()

    by_file = {r.tags["fractal_pipeline/spec_file"]: r for r in result.run_requests}
    assert set(by_file) == {f"specs/corpus/{name}" for name in MIXED}
    covered = {key for run in result.run_requests for key in range_keys(instance, run)}
    assert covered == {key for name in MIXED for key in MANIFEST[name]["keys"]}
    for name in [*MIXED, "only_bad_rows.csv"]:
        report = get_json(s3_env, f"specs/_rejected/corpus/{name}.json")
        assert report["error"] is None
        assert [
            [row["line"], row["reason"][: len(reason)]]
            for row, (_, reason) in zip(report["rejected"], MANIFEST[name]["rejected"], strict=True)
        ] == MANIFEST[name]["rejected"]
        assert all(row["value"] for row in report["rejected"])
        if name in MIXED:
            assert by_file[f"specs/corpus/{name}"].tags["fractal_pipeline/rejected_rows"] == str(
                len(report["rejected"])
            )
    for name in REFUSED:
        report = get_json(s3_env, f"specs/_rejected/corpus/{name}.json")
        assert MANIFEST[name]["error"].replace(name, f"specs/corpus/{name}") in report["error"]
        assert report["accepted"] == 0
    assert not exists(s3_env, "specs/_rejected/corpus/header_only.csv.json")
    logged = capfd.readouterr().err
    assert "specs/corpus/binary_junk.csv: skipped, file: contains NUL bytes" in logged
    assert "line 2: kind: unknown kind 'dragn'; did you mean 'dragon'?" in logged

    # refused files are not retried each tick, and the reports are not read as spec files
    assert daemon.tick().run_requests == []
    # a fixed upload replaces the report's verdict: the report is removed
    put(s3_env, "specs/corpus/latin1.csv", "kind,depth\ndragon,12\n")
    fixed = daemon.tick()
    assert [r.tags["fractal_pipeline/spec_file"] for r in fixed.run_requests] == ["specs/corpus/latin1.csv"]
    assert not exists(s3_env, "specs/_rejected/corpus/latin1.csv.json")


def test_oversized_file_is_refused_without_downloading_it(s3_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    put(s3_env, "specs/huge.csv", b"kind,depth\n" + b"dragon,1\n" * 600_000)  # 5.4 MB
    result = FakeDaemon(instance, s3_env).tick()
    assert result.run_requests == []
    assert "over the 5 MB limit" in get_json(s3_env, "specs/_rejected/huge.csv.json")["error"]


@pytest.mark.reliability(
    "storage outage", "bucket deleted between sensor ticks: the tick fails in one line, the cursor does not move"
)
def test_a_missing_bucket_fails_the_tick_clearly_and_keeps_the_cursor(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    put(s3_env, "specs/a.csv", CSV)
    daemon = FakeDaemon(instance, s3_env)
    daemon.tick()
    kept = daemon.cursor
    daemon.store = store_resource({**s3_env, "FRACTALS_BUCKET": "no-such-bucket-fractals"})
    with pytest.raises(StoreError, match="FRACTALS_BUCKET: bucket 'no-such-bucket-fractals' does not exist"):
        daemon.tick()
    assert daemon.cursor == kept


@pytest.mark.reliability(
    "storage outage",
    "credentials become invalid between sensor ticks: the tick fails in one line naming the variable, "
    "the cursor does not move; restored, every file is handled once",
)
def test_invalid_credentials_fail_the_tick_clearly_and_keep_the_cursor(
    s3_env: dict[str, str], instance: dg.DagsterInstance, moto_auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def credentials(access_key_id: str, secret: str) -> None:
        """The sensor's code server restarted with these in its environment: a new process resolves
        boto3's credentials afresh (a running one keeps those its default session resolved first)."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)

    uploader = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=moto_auth["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=moto_auth["AWS_SECRET_ACCESS_KEY"],
    )

    def upload(key: str, body: str) -> str:
        etag = uploader.put_object(Bucket=s3_env["FRACTALS_BUCKET"], Key=key, Body=body.encode())["ETag"]
        return f"{key}@{str(etag).strip(chr(34))}"

    credentials(moto_auth["AWS_ACCESS_KEY_ID"], moto_auth["AWS_SECRET_ACCESS_KEY"])
    first = upload("specs/a.csv", "kind,depth\ndragon,3\n")
    daemon = FakeDaemon(instance, s3_env)

    def tick() -> list[str]:
        return [str(run.run_key) for run in daemon.tick().run_requests or []]

    assert tick() == [first]
    kept = daemon.cursor
    requested: list[str] = []

    credentials(moto_auth["AWS_ACCESS_KEY_ID"], "not-the-secret-of-this-key")
    late = upload("specs/b.csv", "kind,depth\nlevy_c,4\n")  # arrives while the sensor cannot read
    with pytest.raises(StoreError) as wrong_secret:
        requested += tick()
    assert str(wrong_secret.value).startswith("AWS_SECRET_ACCESS_KEY: ")
    assert "(SignatureDoesNotMatch)" in str(wrong_secret.value)
    assert daemon.cursor == kept

    credentials("AKIAFRACTALSUNKNOWN0", moto_auth["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(StoreError) as unknown_key:
        requested += tick()
    assert str(unknown_key.value).startswith("AWS_ACCESS_KEY_ID: ")
    assert "(InvalidAccessKeyId: deleted, deactivated or mistyped)" in str(unknown_key.value)
    assert daemon.cursor == kept
    for error in (wrong_secret.value, unknown_key.value):
        message = str(error)
        assert "\n" not in message and "AWS_PROFILE" in message and s3_env["AWS_ENDPOINT_URL"] in message
        assert moto_auth["AWS_SECRET_ACCESS_KEY"] not in message and moto_auth["AWS_ACCESS_KEY_ID"] not in message

    credentials(moto_auth["AWS_ACCESS_KEY_ID"], moto_auth["AWS_SECRET_ACCESS_KEY"])
    after = upload("specs/c.csv", "kind,depth\nsierpinski,3\n")
    requested += tick()
    requested += tick()
    assert sorted(requested) == [late, after]  # each file once, none lost
    assert sorted(daemon.launched) == sorted([first, late, after])


def test_work_is_spread_over_ticks_each_file_once(s3_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    for i in range(7):
        put(s3_env, f"specs/f{i}.csv", f"kind,depth,size\ndragon,{i},32\n")
    daemon = FakeDaemon(instance, s3_env)
    sizes = [len(daemon.tick(max_files=3).run_requests) for _ in range(4)]
    assert sizes == [3, 3, 1, 0]
    assert sorted(k.split("@")[0] for k in daemon.launched) == [f"specs/f{i}.csv" for i in range(7)]
    assert list(instance.get_dynamic_partitions(PARTITIONS_NAME)) == [f"dragon_{i}-32px" for i in range(7)]


def test_two_thousand_objects_under_the_prefix(s3_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    from moto.backends import get_backend

    # Seed 2,000 small, already handled spec files straight into moto's in-process store (an HTTP
    # PUT each would take ~30 s here); the sensor below lists them over HTTP like any client.
    backend = get_backend("s3")["123456789012"]["global"]
    bucket = s3_env["FRACTALS_BUCKET"]
    for i in range(2000):
        backend.put_object(bucket, f"specs/bulk/{i:05d}.csv", b"kind,depth\n")
    client = s3_client(s3_env["AWS_ENDPOINT_URL"])
    listed = get_objects(bucket, "specs/", client=client)
    assert len(listed) == 2000
    daemon = FakeDaemon(instance, s3_env, cursor=SpecFilesCursor().advanced(listed).dump())

    last = put(s3_env, "specs/zz-last-page.csv", CSV)  # sorts after every bulk key: on the third page
    edited = put(s3_env, "specs/bulk/01500.csv", "kind,depth\nlevy_c,4\n")  # second page, edited in place
    started = time.monotonic()
    result = daemon.tick()
    elapsed = time.monotonic() - started
    assert {r.run_key for r in result.run_requests} == {
        f"specs/zz-last-page.csv@{last}",
        f"specs/bulk/01500.csv@{edited}",
    }
    assert elapsed < 55, f"tick took {elapsed:.1f} s; Dagster's sensor timeout is 60 s"
    assert daemon.tick().run_requests == []


def test_definitions_carry_the_automation_with_deliberate_default_statuses(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRACTALS_SENSOR_INTERVAL", "5")
    monkeypatch.setenv("FRACTALS_SCHEDULE_CRON", "15 3 * * 1")
    monkeypatch.setenv("FRACTALS_SPECS_PREFIX", "incoming")
    repo = build_definitions().get_repository_def()
    sensor = repo.get_sensor_def(SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # bucket set: uploads picked up at once
    assert sensor.minimum_interval_seconds == 5
    assert "s3://$FRACTALS_BUCKET/incoming/" in (sensor.description or "")
    schedule = repo.get_schedule_def(SCHEDULE_NAME)
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.cron_schedule == "15 3 * * 1"
    assert repo.get_sensor_def(RENDER_AFTER_SCHEDULE_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    assert repo.get_sensor_def(COLLAGE_SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    assert repo.has_job(RENDER_JOB_NAME)

    monkeypatch.delenv("FRACTALS_BUCKET")
    monkeypatch.setenv("FRACTALS_DIR", str(tmp_path))
    local = build_definitions().get_repository_def()
    assert local.get_sensor_def(SENSOR_NAME).default_status == dg.DefaultSensorStatus.STOPPED

    monkeypatch.setenv("FRACTALS_SCHEDULE_CRON", "every morning")
    with pytest.raises(ValueError, match="FRACTALS_SCHEDULE_CRON: 'every morning' is not a cron expression"):
        build_definitions()
    monkeypatch.setenv("FRACTALS_SCHEDULE_CRON", "0 6 * * *")
    monkeypatch.setenv("FRACTALS_SENSOR_INTERVAL", "soon")
    with pytest.raises(ValueError, match="FRACTALS_SENSOR_INTERVAL"):
        build_definitions()


def test_requested_ranges_render_exactly_the_files_specs(s3_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    put(s3_env, "specs/render.csv", "kind,depth,size\ndragon,5,32\nlevy_c,4,32\n")
    put(s3_env, "specs/other.json", json.dumps([{"kind": "sierpinski", "depth": 2, "size": 32}]))
    result = FakeDaemon(instance, s3_env).tick()
    job = build_definitions().resolve_job_def(RENDER_JOB_NAME)
    for run in result.run_requests:
        outcome = job.execute_in_process(
            instance=instance,
            tags=run.tags,
            run_config={"ops": {"fractal_images": {"config": {"workers": 1}}}},
            raise_on_error=False,
        )
        assert outcome.success
    pngs = s3_client(s3_env["AWS_ENDPOINT_URL"]).list_objects_v2(Bucket=s3_env["FRACTALS_BUCKET"], Prefix="fractals/")
    assert sorted(o["Key"] for o in pngs["Contents"]) == [
        "fractals/dragon_5-32px.png",
        "fractals/levy_c_4-32px.png",
        "fractals/sierpinski_2-32px.png",
    ]


def test_a_file_over_scattered_partitions_is_one_run_that_renders_only_its_unstored_specs(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    from fractal_pipeline.fractals import FractalSpec, render_png

    earlier = ["dragon_5-32px", "levy_c_4-32px", "koch_snowflake_2-32px", "sierpinski_2-32px", "hilberts_3-32px"]
    instance.add_dynamic_partitions(PARTITIONS_NAME, earlier)  # registered before, by other files or runs
    put(s3_env, "fractals/levy_c_4-32px.png", render_png(FractalSpec.from_key("levy_c_4-32px")))  # one is stored
    put(s3_env, "specs/mixed.csv", "kind,depth,size\ndragon,5,32\nlevy_c,4,32\nsierpinski,2,32\nmoore,2,32\n")
    result = FakeDaemon(instance, s3_env).tick()
    (run,) = result.run_requests  # one run, however scattered the file's partitions are
    assert (run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]) == (
        "dragon_5-32px",
        "moore_2-32px",  # registered by this tick, at the end
    )
    config = run.run_config["ops"]["fractal_images"]["config"]
    assert config["only"] == ["dragon_5-32px", "sierpinski_2-32px", "moore_2-32px"]  # not the stored levy_c
    outcome = (
        build_definitions()
        .resolve_job_def(RENDER_JOB_NAME)
        .execute_in_process(
            instance=instance,
            tags=run.tags,
            run_config={"ops": {"fractal_images": {"config": {**config, "workers": 1}}}},
        )
    )
    assert outcome.success
    rendered = sorted(m.partition or "" for m in outcome.asset_materializations_for_node("fractal_images"))
    assert rendered == ["dragon_5-32px", "moore_2-32px", "sierpinski_2-32px"]  # koch and hilberts: not the file's
    pngs = s3_client(s3_env["AWS_ENDPOINT_URL"]).list_objects_v2(Bucket=s3_env["FRACTALS_BUCKET"], Prefix="fractals/")
    assert sorted(o["Key"] for o in pngs["Contents"]) == [
        "fractals/dragon_5-32px.png",
        "fractals/levy_c_4-32px.png",
        "fractals/moore_2-32px.png",
        "fractals/sierpinski_2-32px.png",
    ]
