"""fractal_spec_files in queue mode: S3 event notifications to SQS, with the listing as reconciliation.

Everything runs against moto's server on 127.0.0.1 over HTTP: the bucket gets
the notification configuration of ``deploy/template.yaml`` (translated to the
S3 API) pointing at a real SQS queue of the same server, files are uploaded
with boto3, and moto delivers the notifications to the queue as S3 does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import boto3
import dagster as dg
import pytest

from fractal_pipeline.aws.deploy import TEMPLATE_PATH, load_template
from fractal_pipeline.defs.deployment import automation_for
from fractal_pipeline.defs.sensors.cursor import SENSOR_NAME, SpecFilesCursor
from fractal_pipeline.defs.settings import DEFAULT_RECONCILE_S
from fractal_pipeline.specfiles.queue import announced_files
from fractal_pipeline.store import StoreError

from ..conftest import s3_client
from .test_sensor import CSV, JSON, FakeDaemon, get_json, put, range_keys, store_resource

pytestmark = pytest.mark.s3
NOT_DUE = 3600.0  # a reconcile interval no test reaches: only the queue is read
DUE = 0.0  # reconcile on this tick


def sqs(env: Mapping[str, str]) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def template_notifications(queue_arn: str) -> dict[str, Any]:
    """The bucket's NotificationConfiguration in deploy/template.yaml, as the S3 API takes it."""
    template = load_template(TEMPLATE_PATH.read_text())
    configs = template["Resources"]["Bucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert configs and all(c["Queue"] == {"Fn::GetAtt": "SpecsQueue.Arn"} for c in configs)
    return {
        "QueueConfigurations": [
            {
                "QueueArn": queue_arn,
                "Events": [c["Event"]],
                "Filter": {"Key": {"FilterRules": c["Filter"]["S3Key"]["Rules"]}},
            }
            for c in configs
        ]
    }


@pytest.fixture
def queue_env(s3_env: dict[str, str]) -> dict[str, str]:
    """s3_env plus a queue receiving the bucket's notifications as the template configures them.

    Visibility timeout 3 s: a message received but left for the next tick comes back quickly.
    """
    name = f"fractal-specs-{uuid.uuid4().hex[:8]}"
    url = sqs(s3_env).create_queue(QueueName=name, Attributes={"VisibilityTimeout": "3"})["QueueUrl"]
    arn = sqs(s3_env).get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3_client(s3_env["AWS_ENDPOINT_URL"]).put_bucket_notification_configuration(
        Bucket=s3_env["FRACTALS_BUCKET"], NotificationConfiguration=template_notifications(arn)
    )
    return {**s3_env, "FRACTALS_SPECS_QUEUE": name, "QUEUE_URL": url}


def depth(env: Mapping[str, str]) -> int:
    """Messages in the queue, visible or received and not deleted yet."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs(env).get_queue_attributes(QueueUrl=env["QUEUE_URL"], AttributeNames=names)["Attributes"]
    return sum(int(attributes[name]) for name in names)


def take_message(env: Mapping[str, str]) -> str:
    """Receive and delete one message (a notification lost on its way); its body."""
    response = sqs(env).receive_message(QueueUrl=env["QUEUE_URL"], MaxNumberOfMessages=1)
    (message,) = response["Messages"]
    sqs(env).delete_message(QueueUrl=env["QUEUE_URL"], ReceiptHandle=message["ReceiptHandle"])
    return str(message["Body"])


def send(env: Mapping[str, str], body: str) -> None:
    sqs(env).send_message(QueueUrl=env["QUEUE_URL"], MessageBody=body)


def notification(env: Mapping[str, str], key: str, etag: str, **changes: Any) -> str:
    """An S3 event notification body like the ones S3 (and moto) send."""
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": env["FRACTALS_BUCKET"], "arn": f"arn:aws:s3:::{env['FRACTALS_BUCKET']}"},
            "object": {"key": key.replace(" ", "+"), "size": 40, "eTag": etag},
        },
    }
    record.update(changes)
    return json.dumps({"Records": [record]})


def keys_of(result: dg.SensorResult) -> list[str]:
    return [str(run.run_key) for run in result.run_requests or []]


class QueueDaemon(FakeDaemon):
    """The fake daemon, ticking the sensor in queue mode."""

    def __init__(self, instance: dg.DagsterInstance, env: Mapping[str, str], cursor: str | None = None) -> None:
        super().__init__(instance, env, cursor)
        self.queue = env["FRACTALS_SPECS_QUEUE"]

    def tick(self, reconcile_s: float = NOT_DUE, **limits: Any) -> dg.SensorResult:  # type: ignore[override]
        return super().tick(queue=self.queue, reconcile_s=reconcile_s, **limits)


def primed(instance: dg.DagsterInstance, env: Mapping[str, str]) -> QueueDaemon:
    """A daemon past its first tick (which always lists the prefix, and drains S3's test event)."""
    daemon = QueueDaemon(instance, env)
    first = daemon.tick()
    assert first.run_requests == []
    assert SpecFilesCursor.parse(daemon.cursor).reconciled_at is not None
    assert depth(env) == 0  # the s3:TestEvent moto sent when the notification was configured: deleted
    return daemon


def test_notified_csv_and_json_files_are_handled_without_listing(
    queue_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    daemon = primed(instance, queue_env)
    before = SpecFilesCursor.parse(daemon.cursor)
    csv_etag = put(queue_env, "specs/batch.csv", CSV)
    json_etag = put(queue_env, "specs/more/batch one.json", JSON)
    assert depth(queue_env) == 2

    result = daemon.tick()
    assert sorted(keys_of(result)) == [f"specs/batch.csv@{csv_etag}", f"specs/more/batch one.json@{json_etag}"]
    assert [r.partition_keys for r in result.dynamic_partitions_requests or []] == [
        ["dragon_4-64px", "levy_c_5-64px", "koch_snowflake_2-64px", "sierpinski_3-64px", "dragon_6-64px"]
    ]
    runs = {run.run_key: run for run in result.run_requests}
    assert range_keys(instance, runs[f"specs/more/batch one.json@{json_etag}"]) == [
        "sierpinski_3-64px",
        "dragon_6-64px",
    ]
    assert depth(queue_env) == 0  # handled: deleted
    after = SpecFilesCursor.parse(result.cursor)
    assert {k: v[0] for k, v in after.seen.items()} == {
        "specs/batch.csv": csv_etag,
        "specs/more/batch one.json": json_etag,
    }
    assert after.last_modified == before.last_modified  # only a listing moves the watermark
    assert after.reconciled_at == before.reconciled_at

    quiet = daemon.tick()
    assert quiet.run_requests == []
    assert quiet.skip_reason is not None and "no new spec files" in str(quiet.skip_reason.skip_message)
    # the reconciling listing finds both files in the cursor: nothing twice
    assert daemon.tick(reconcile_s=DUE).run_requests == []
    assert len(daemon.launched) == 2


def test_a_queue_tick_does_not_list_the_prefix(queue_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    daemon = primed(instance, queue_env)
    client = s3_client(queue_env["AWS_ENDPOINT_URL"])
    client.put_bucket_notification_configuration(Bucket=queue_env["FRACTALS_BUCKET"], NotificationConfiguration={})
    put(queue_env, "specs/unannounced.csv", CSV)  # no notification: only a listing can find it
    assert daemon.tick().run_requests == []
    assert [k.split("@")[0] for k in keys_of(daemon.tick(reconcile_s=DUE))] == ["specs/unannounced.csv"]


@pytest.mark.reliability("notification fault", "the same S3 notification delivered twice (queue mode): one run")
def test_duplicate_delivery_gives_one_run(queue_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    daemon = primed(instance, queue_env)
    etag = put(queue_env, "specs/twice.csv", CSV)
    body = take_message(queue_env)
    send(queue_env, body)
    send(queue_env, body)  # SQS delivers at least once: the same notification twice in one tick
    assert keys_of(daemon.tick()) == [f"specs/twice.csv@{etag}"]
    assert depth(queue_env) == 0
    send(queue_env, body)  # ...and once more, ticks later
    late = daemon.tick()
    assert late.run_requests == [] and not late.dynamic_partitions_requests
    assert depth(queue_env) == 0
    assert list(daemon.launched) == [f"specs/twice.csv@{etag}"]


def test_re_evaluating_a_tick_from_its_old_cursor_gives_the_same_run_keys(
    queue_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    daemon = primed(instance, queue_env)
    old = daemon.cursor
    etag = put(queue_env, "specs/again.csv", CSV)
    body = take_message(queue_env)
    send(queue_env, body)
    first = keys_of(daemon.tick())
    assert first == [f"specs/again.csv@{etag}"]

    # the tick's result was lost after its messages were deleted: the daemon evaluates from the old cursor
    replay = QueueDaemon(instance, queue_env, cursor=old)
    replay.launched = daemon.launched
    assert keys_of(replay.tick()) == []  # the message is gone...
    assert keys_of(replay.tick(reconcile_s=DUE)) == first  # ...the listing finds the file: the same run key
    # the notification delivered again to a tick from the old cursor: the same run key too
    send(queue_env, body)
    assert keys_of(QueueDaemon(instance, queue_env, cursor=old).tick()) == first
    assert list(daemon.launched) == first  # the daemon launched it once


@pytest.mark.reliability(
    "notification fault",
    "a notification lost or deleted before its file was handled: the reconciling listing picks the file up, once",
)
def test_a_file_whose_message_was_lost_is_picked_up_by_the_reconciliation_once(
    queue_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    daemon = primed(instance, queue_env)
    etag = put(queue_env, "specs/lost.csv", CSV)
    take_message(queue_env)  # lost
    put(queue_env, "specs/kept.csv", "kind,depth\nlevy_c,3\n")
    assert [k.split("@")[0] for k in keys_of(daemon.tick())] == ["specs/kept.csv"]
    assert daemon.tick().run_requests == []
    reconciled = daemon.tick(reconcile_s=DUE)
    assert keys_of(reconciled) == [f"specs/lost.csv@{etag}"]
    cursor = SpecFilesCursor.parse(reconciled.cursor)
    assert cursor.reconciled_at is not None and cursor.reconciled_at > time.time() - 60
    assert daemon.tick(reconcile_s=DUE).run_requests == []
    assert daemon.tick().run_requests == []
    assert sorted(k.split("@")[0] for k in daemon.launched) == ["specs/kept.csv", "specs/lost.csv"]


def test_files_uploaded_before_the_queue_existed_are_listed_on_the_first_tick(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    etag = put(s3_env, "specs/early.csv", CSV)
    name = f"fractal-specs-{uuid.uuid4().hex[:8]}"
    url = sqs(s3_env).create_queue(QueueName=name)["QueueUrl"]
    env = {**s3_env, "FRACTALS_SPECS_QUEUE": url, "QUEUE_URL": url}  # a queue URL works as well as a name
    # the cursor of a sensor that listed in the old way, written before queue mode existed
    listing = FakeDaemon(instance, s3_env)
    assert keys_of(listing.tick()) == [f"specs/early.csv@{etag}"]
    assert "reconciled_at" not in json.loads(listing.cursor or "")
    put(s3_env, "specs/meanwhile.csv", "kind,depth\nlevy_c,3\n")
    daemon = QueueDaemon(instance, env, cursor=listing.cursor)
    daemon.launched = listing.launched
    assert [k.split("@")[0] for k in keys_of(daemon.tick())] == ["specs/meanwhile.csv"]
    assert SpecFilesCursor.parse(daemon.cursor).reconciled_at is not None
    assert daemon.tick().run_requests == []


def test_notifications_of_other_objects_are_ignored_and_deleted(
    queue_env: dict[str, str], instance: dg.DagsterInstance, capfd: pytest.CaptureFixture[str]
) -> None:
    daemon = primed(instance, queue_env)
    bucket = queue_env["FRACTALS_BUCKET"]
    client = s3_client(queue_env["AWS_ENDPOINT_URL"])
    for key in ("other/a.csv", "specs/readme.md", "specsx/a.csv"):  # the bucket's filters send nothing for these
        client.put_object(Bucket=bucket, Key=key, Body=CSV.encode())
    assert depth(queue_env) == 0
    etag = put(queue_env, "specs/ok.csv", CSV)
    # what a catch-all notification configuration, another bucket or a stray sender would deliver
    send(queue_env, notification(queue_env, "other/a.csv", etag))
    send(queue_env, notification(queue_env, "specs/_rejected/x.csv.json", etag))
    send(queue_env, notification({**queue_env, "FRACTALS_BUCKET": "another-bucket"}, "specs/ok2.csv", etag))
    send(queue_env, notification(queue_env, "specs/ok.csv", etag, eventName="ObjectRemoved:Delete"))
    send(queue_env, json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}))
    send(queue_env, "not json at all")
    send(queue_env, json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}))
    # a non-.csv/.json key under the prefix is refused as the listing refuses it, with a report
    notes_etag = str(client.put_object(Bucket=bucket, Key="specs/readme.md", Body=b"# notes\n")["ETag"]).strip('"')
    send(queue_env, notification(queue_env, "specs/readme.md", notes_etag))

    capfd.readouterr()
    result = daemon.tick()
    assert keys_of(result) == [f"specs/ok.csv@{etag}"]
    logged = capfd.readouterr().err
    assert logged.count("is not an S3 event notification") == 2, logged
    # every message deleted, malformed ones included; the one left announces the report the tick wrote
    (left,) = [o["Key"] for o in announced_files(take_message(queue_env), queue_env["FRACTALS_BUCKET"], "")]
    assert left == "specs/_rejected/readme.md.json"
    send(queue_env, notification(queue_env, left, etag))
    assert daemon.tick().run_requests == []  # reports are never handled as spec files
    assert depth(queue_env) == 0
    report = get_json(queue_env, "specs/_rejected/readme.md.json")
    assert report["etag"] == notes_etag and report["error"] and report["accepted"] == 0
    # the listing refuses it the same way, and does not handle anything twice
    listing = FakeDaemon(instance, queue_env).tick()
    assert get_json(queue_env, "specs/_rejected/readme.md.json")["error"] == report["error"]
    assert keys_of(listing) == [f"specs/ok.csv@{etag}"]
    assert daemon.tick(reconcile_s=DUE).run_requests == []


def test_a_file_deleted_before_the_tick_reads_it(queue_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    daemon = primed(instance, queue_env)
    put(queue_env, "specs/gone.csv", CSV)
    s3_client(queue_env["AWS_ENDPOINT_URL"]).delete_object(Bucket=queue_env["FRACTALS_BUCKET"], Key="specs/gone.csv")
    result = daemon.tick()
    assert result.run_requests == [] and not result.dynamic_partitions_requests
    assert depth(queue_env) == 0
    assert daemon.tick(reconcile_s=DUE).run_requests == []


def test_a_replaced_file_renders_its_new_version_once(queue_env: dict[str, str], instance: dg.DagsterInstance) -> None:
    daemon = primed(instance, queue_env)
    put(queue_env, "specs/edit.csv", CSV)
    edited = put(queue_env, "specs/edit.csv", "kind,depth,size\nsierpinski,2,64\n")
    result = daemon.tick()  # the first notification's version is gone (If-Match fails): skipped
    assert keys_of(result) == [f"specs/edit.csv@{edited}"]
    assert [r.partition_keys for r in result.dynamic_partitions_requests or []] == [["sierpinski_2-64px"]]
    assert depth(queue_env) == 0
    assert daemon.tick(reconcile_s=DUE).run_requests == []


@pytest.mark.parametrize("queue", ["no-such-queue", "http://127.0.0.1:1/123456789012/unused"])
@pytest.mark.reliability(
    "notification fault", "the queue missing between ticks: the tick fails in one line, the cursor does not move"
)
def test_a_bad_queue_fails_the_tick_in_one_line_and_keeps_the_cursor(
    queue_env: dict[str, str], instance: dg.DagsterInstance, queue: str, moto_endpoint: str
) -> None:
    daemon = primed(instance, queue_env)
    put(queue_env, "specs/waiting.csv", CSV)
    kept = daemon.cursor
    url = queue.replace("http://127.0.0.1:1", moto_endpoint)
    broken = QueueDaemon(instance, {**queue_env, "FRACTALS_SPECS_QUEUE": url}, cursor=kept)
    with pytest.raises(StoreError) as failure:
        broken.tick()
    message = str(failure.value)
    assert message.startswith("FRACTALS_SPECS_QUEUE: queue ") and "does not exist" in message
    assert "\n" not in message
    assert broken.cursor == kept
    assert [k.split("@")[0] for k in keys_of(daemon.tick())] == ["specs/waiting.csv"]  # fixed: handled


@pytest.mark.reliability(
    "notification fault",
    "queue access denied or credentials wrong: the tick fails in one line naming the variable to fix",
)
def test_queue_access_denied_and_wrong_credentials_fail_in_one_line(
    queue_env: dict[str, str],
    instance: dg.DagsterInstance,
    moto_auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def credentials(access_key_id: str, secret: str) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)

    credentials(moto_auth["AWS_ACCESS_KEY_ID"], moto_auth["AWS_SECRET_ACCESS_KEY"])
    daemon = QueueDaemon(instance, queue_env, cursor=SpecFilesCursor(reconciled_at=time.time()).dump())
    kept = daemon.cursor
    with pytest.raises(StoreError) as denied:
        daemon.tick()
    assert str(denied.value).startswith("FRACTALS_SPECS_QUEUE: access to queue ")
    assert "sqs:ReceiveMessage" in str(denied.value) and "\n" not in str(denied.value)
    assert daemon.cursor == kept

    credentials(moto_auth["AWS_ACCESS_KEY_ID"], "not-the-secret")
    with pytest.raises(StoreError) as wrong:
        daemon.tick()
    assert str(wrong.value).startswith("AWS_SECRET_ACCESS_KEY: ") and "(SignatureDoesNotMatch)" in str(wrong.value)
    assert "\n" not in str(wrong.value)

    credentials("AKIAFRACTALSUNKNOWN0", moto_auth["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(StoreError) as unknown:
        daemon.tick()
    assert str(unknown.value).startswith("AWS_ACCESS_KEY_ID: ") and "(InvalidClientTokenId)" in str(unknown.value)
    assert daemon.cursor == kept


def test_many_files_in_one_tick_and_leftovers_on_the_next(
    queue_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    daemon = primed(instance, queue_env)
    etags = {
        f"specs/many-{i:02d}.csv": put(queue_env, f"specs/many-{i:02d}.csv", f"kind,depth\ndragon,{i}\n")
        for i in range(23)
    }
    result = daemon.tick()  # three or more ReceiveMessage batches of at most 10
    assert sorted(keys_of(result)) == sorted(f"{k}@{e}" for k, e in etags.items())
    assert depth(queue_env) == 0

    more = {
        f"specs/more-{i:02d}.csv": put(queue_env, f"specs/more-{i:02d}.csv", f"kind,depth\nlevy_c,{i}\n")
        for i in range(12)
    }
    first = keys_of(daemon.tick(max_files=4))
    assert len(first) == 4
    # the rest of the received batch was not deleted: those messages come back after the visibility timeout
    assert depth(queue_env) == 8
    seen: list[str] = list(first)
    deadline = time.monotonic() + 30
    while len(seen) < 12 and time.monotonic() < deadline:
        seen += keys_of(daemon.tick(max_files=4))
        time.sleep(0.5)
    assert sorted(seen) == sorted(f"{k}@{e}" for k, e in more.items())  # each once
    assert depth(queue_env) == 0
    assert daemon.tick(reconcile_s=DUE).run_requests == []


def test_definitions_read_the_queue_settings(queue_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    def sensor() -> dg.SensorDefinition:
        (found,) = [s for s in automation_for(bucket_configured=True).sensors if s.name == SENSOR_NAME]
        return found

    monkeypatch.delenv("FRACTALS_SPECS_QUEUE", raising=False)
    assert "SQS" not in (sensor().description or "")
    monkeypatch.setenv("FRACTALS_SPECS_QUEUE", queue_env["FRACTALS_SPECS_QUEUE"])
    assert f"SQS queue {queue_env['FRACTALS_SPECS_QUEUE']}" in (sensor().description or "")
    assert f"every {DEFAULT_RECONCILE_S} s" in (sensor().description or "")
    monkeypatch.setenv("FRACTALS_SPECS_RECONCILE_S", "120")
    assert "every 120 s" in (sensor().description or "")
    monkeypatch.setenv("FRACTALS_SPECS_RECONCILE_S", "soon")
    with pytest.raises(ValueError, match=r"^FRACTALS_SPECS_RECONCILE_S: 'soon' is not a whole number"):
        sensor()
    monkeypatch.delenv("FRACTALS_SPECS_RECONCILE_S")
    monkeypatch.setenv("FRACTALS_SPECS_QUEUE", "my queue!")
    with pytest.raises(ValueError, match=r"^FRACTALS_SPECS_QUEUE: 'my queue!' is not an SQS queue URL, ARN or name"):
        sensor()

    # the sensor the definitions build reads the queue: a notified file becomes a run
    monkeypatch.setenv("FRACTALS_SPECS_QUEUE", queue_env["QUEUE_URL"])
    etag = put(queue_env, "specs/defs.csv", CSV)
    store = store_resource(queue_env)
    with dg.instance_for_test() as instance:
        cursor = SpecFilesCursor(reconciled_at=time.time()).dump()  # not due: the queue alone
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"store": store})
        result = sensor()(context)
    assert isinstance(result, dg.SensorResult)
    assert keys_of(result) == [f"specs/defs.csv@{etag}"]


def test_notification_parsing() -> None:
    def body(key: str, **obj: Any) -> str:
        record = {
            "eventName": "ObjectCreated:CompleteMultipartUpload",
            "eventTime": "2026-01-02T03:04:05.678Z",
            "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 7, "eTag": "abc-2", **obj}},
        }
        return json.dumps({"Records": [record]})

    (obj,) = announced_files(body("specs/a+b%2Bc%C3%A9.csv"), "b", "specs/")
    assert obj["Key"] == "specs/a b+cé.csv" and obj["ETag"] == '"abc-2"' and obj["Size"] == 7
    assert obj["LastModified"].isoformat() == "2026-01-02T03:04:05.678000+00:00"
    sns = json.dumps({"Type": "Notification", "Message": body("specs/x.json")})
    assert [o["Key"] for o in announced_files(sns, "b", "specs/")] == ["specs/x.json"]
    assert announced_files(body("specs/_rejected/a.csv.json"), "b", "specs/", exclude=["specs/_rejected/"]) == []
    for bad in (
        "[]",
        "{}",
        body("specs/a.csv", eTag=""),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}),
    ):
        with pytest.raises(ValueError):
            announced_files(bad, "b", "specs/")


def test_old_cursors_still_parse() -> None:
    old = '{"last_modified":"2026-01-01T00:00:00+00:00","seen":{"specs/a.csv":["e",1767225600.0]}}'
    cursor = SpecFilesCursor.parse(old)
    assert cursor.reconciled_at is None and cursor.seen == {"specs/a.csv": ("e", 1767225600.0)}
    assert cursor.dump() == old  # listing mode writes exactly what it wrote before
    stamped = SpecFilesCursor.parse(old[:-1] + ',"reconciled_at":1767225700.5}')
    assert stamped.reconciled_at == 1767225700.5
    assert SpecFilesCursor.parse(stamped.dump()) == stamped


def test_the_template_wires_the_queue() -> None:
    """deploy/template.yaml: notifications for specs/*.csv and specs/*.json to the queue the sensor reads."""
    resources = load_template(TEMPLATE_PATH.read_text())["Resources"]
    configs = resources["Bucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    rules = sorted(tuple(sorted((r["Name"], r["Value"]) for r in c["Filter"]["S3Key"]["Rules"])) for c in configs)
    assert rules == [(("prefix", "specs/"), ("suffix", ".csv")), (("prefix", "specs/"), ("suffix", ".json"))]
    assert {c["Event"] for c in configs} == {"s3:ObjectCreated:*"}
    assert "SpecsQueuePolicy" in resources["Bucket"]["DependsOn"]
    (statement,) = resources["SpecsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    assert "aws:SourceArn" in json.dumps(statement["Condition"])
    for name in ("DaemonTaskDefinition", "CodeServerTaskDefinition"):
        environment = resources[name]["Properties"]["ContainerDefinitions"][0]["Environment"]
        assert {"Name": "FRACTALS_SPECS_QUEUE", "Value": {"Ref": "SpecsQueue"}} in environment
