"""SPEC §3 Output: the event envelope — keys, rendering, ids, limits, record key and headers."""

from __future__ import annotations

import json
import uuid

import pytest
import spec_helpers as h

from streams import envelope
from streams.errors import Invalid
from streams.pipeline import ArtifactPipeline, AssetPipeline

# One fixed input message (bytes, not re-encoded) and the exact bytes it must give. The ids are
# pinned too: a redeployed processor replaying old input must produce the very same ids.
KNOWN_INPUT = (
    b'{"op": "create", "occurred": "2026-11-24T10:00:00.123456Z", "context": {"flow_run": '
    b'{"id": "99018168-40f7-4585-b02d-6d8eba57676e", "name": "convivial-oarfish"}, "tags": '
    b'["b", "a"]}, "artifact": {"id": "f707d9b7-d2cc-4a8b-bd70-d874ae518c60", "key": "k", '
    b'"type": "markdown", "data": {"x": [1, 2.5, null]}, "description": "d", "metadata_": null, '
    b'"flow_run_id": "99018168-40f7-4585-b02d-6d8eba57676e", "task_run_id": null, '
    b'"created": "2026-11-24T10:00:00.123456Z"}}'
)
KNOWN_OUTPUT = [
    b'{"occurred":"2026-11-24T10:00:00.123456Z","event":"prefect.artifact-collection.created",'
    b'"resource":{"prefect.resource.id":"prefect.artifact-collection.'
    b'ad172ccb-a937-50b6-a9a6-89dc40f827c8","prefect.resource.name":"k"},"related":[{"prefect.'
    b'resource.id":"prefect.artifact.f707d9b7-d2cc-4a8b-bd70-d874ae518c60","prefect.resource.role'
    b'":"latest"},{"prefect.resource.id":"prefect.flow-run.99018168-40f7-4585-b02d-6d8eba57676e",'
    b'"prefect.resource.role":"flow-run"}],"payload":{"key":"k","type":"markdown","data":{"x":'
    b'[1,2.5,null]},"description":"d"},"id":"01a20cff-7d7b-7811-acc2-a9dfdaeb9b5f","follows":null}',
    b'{"occurred":"2026-11-24T10:00:00.123456Z","event":"prefect.artifact.created","resource":'
    b'{"prefect.resource.id":"prefect.artifact.f707d9b7-d2cc-4a8b-bd70-d874ae518c60",'
    b'"prefect.resource.name":"k"},"related":[{"prefect.resource.id":"prefect.flow-run.'
    b'99018168-40f7-4585-b02d-6d8eba57676e","prefect.resource.role":"flow-run","prefect.resource.'
    b'name":"convivial-oarfish"},{"prefect.resource.id":"prefect.tag.a","prefect.resource.role":'
    b'"tag"},{"prefect.resource.id":"prefect.tag.b","prefect.resource.role":"tag"}],"payload":'
    b'{"key":"k","type":"markdown","description":"d"},"id":"01a20cff-7d7b-7a6a-950d-584e9245e087",'
    b'"follows":null}',
]


def _build(**overrides):
    kwargs = dict(
        occurred_us=h.us(),
        name="prefect.test.event",
        resource={"prefect.resource.id": "prefect.test.1"},
        related=[],
        payload={},
        content=b"content",
    )
    kwargs.update(overrides)
    return envelope.build(**kwargs)


def _related(n):
    return [h.rel(f"prefect.thing.{i}", "thing") for i in range(n)]


class TestSerialization:
    def test_known_event_byte_for_byte(self):
        outcome = ArtifactPipeline().process(KNOWN_INPUT)
        assert [e.value for e in outcome.events] == KNOWN_OUTPUT

    def test_exact_key_order(self):
        for value in KNOWN_OUTPUT:
            assert list(json.loads(value)) == h.ENVELOPE_KEYS
            h.check_envelope(value)

    def test_resource_id_first_in_every_label_map(self):
        for value in KNOWN_OUTPUT:
            event = json.loads(value)
            assert next(iter(event["resource"])) == "prefect.resource.id"
            for entry in event["related"]:
                assert list(entry)[:2] == ["prefect.resource.id", "prefect.resource.role"]

    def test_follows_is_null_and_payload_object(self):
        event = json.loads(_build().value)
        assert event["follows"] is None
        assert event["payload"] == {}
        assert event["related"] == []

    @pytest.mark.parametrize(
        "occurred_us, rendered",
        [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1, "1970-01-01T00:00:00.000001Z"),
            (h.us(), "2026-11-24T10:00:00.123456Z"),
            (h.us(0.876544), "2026-11-24T10:00:01.000000Z"),
            (1_767_225_599_999_999, "2025-12-31T23:59:59.999999Z"),
            (1_767_225_600_000_000, "2026-01-01T00:00:00.000000Z"),
            (951_782_400_000_001, "2000-02-29T00:00:00.000001Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
        ],
    )
    def test_occurred_rendering(self, occurred_us, rendered):
        assert json.loads(_build(occurred_us=occurred_us).value)["occurred"] == rendered


class TestIds:
    def test_uuid7_layout_with_occurred_milliseconds(self):
        event = json.loads(_build(occurred_us=h.us()).value)
        u = uuid.UUID(event["id"])
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert int.from_bytes(u.bytes[:6], "big") == h.us() // 1000
        h.check_event_id(event)

    def test_same_input_twice_gives_the_same_bytes(self):
        first = [e.value for e in ArtifactPipeline().process(KNOWN_INPUT).events]
        second = [e.value for e in ArtifactPipeline().process(KNOWN_INPUT).events]
        assert first == second

    def test_two_events_of_one_message_have_different_ids(self):
        ids = [json.loads(v)["id"] for v in KNOWN_OUTPUT]
        assert len(set(ids)) == 2
        assert ids[0][:13] == ids[1][:13]  # same millisecond prefix

    def test_id_does_not_depend_on_the_message_before(self):
        """A message's events share the hash of its bytes; other messages in between change nothing."""
        args = [(h.us(), "prefect.test.event", f"prefect.test.{i}") for i in range(3)]
        a, b = b"message a", b"message b"
        alone = [envelope.event_id(*x, a) for x in args]
        interleaved = []
        for x in args:
            interleaved.append(envelope.event_id(*x, a))
            envelope.event_id(*x, b)
            interleaved.append(envelope.event_id(*x, bytes(bytearray(a))))  # equal, not the same
        assert interleaved == [i for i in alone for _ in (0, 1)]
        assert len(set(alone)) == 3

    @pytest.mark.parametrize(
        "change",
        [
            {"content": b"other content"},
            {"name": "prefect.test.other"},
            {"resource": {"prefect.resource.id": "prefect.test.2"}},
            {"occurred_us": h.us() + 1000},
        ],
        ids=["content", "name", "resource-id", "occurred"],
    )
    def test_different_inputs_give_different_ids(self, change):
        assert json.loads(_build().value)["id"] != json.loads(_build(**change).value)["id"]

    def test_one_byte_of_input_changes_every_id(self):
        other = KNOWN_INPUT.replace(b'"description": "d"', b'"description": "e"')
        a = ArtifactPipeline().process(KNOWN_INPUT).events
        b = ArtifactPipeline().process(other).events
        assert {json.loads(x.value)["id"] for x in a}.isdisjoint(
            json.loads(x.value)["id"] for x in b
        )

    def test_the_same_event_from_different_messages_is_not_deduplicated_away(self):
        """Two updates with identical changes at the same time but different context."""
        one = h.run_artifacts([h.update(h.uid(1), {"data": 1}, ctx=None)])
        two = h.run_artifacts([h.update(h.uid(1), {"data": 1}, ctx=h.context())])
        assert one[0]["id"] != two[0]["id"]

    def test_ids_unique_across_a_stream(self):
        messages = [h.create(h.uid(i), key=f"k{i % 3}", at=i / 1000) for i in range(200)]
        messages += [h.update(h.uid(i), {"data": i}, at=1) for i in range(200)]
        ids = [e["id"] for e in h.run_artifacts(messages)]
        assert len(ids) == len(set(ids)) == 200 + 200 + 3 + 197


class TestLimits:
    def test_related_over_100_keeps_the_first_100_and_says_so(self):
        event = _build(related=_related(150))
        parsed = json.loads(event.value)
        assert parsed["related"] == _related(100)
        assert event.related_dropped == 50
        assert event.headers == [
            ("prefect-event", b"prefect.test.event"),
            ("prefect-related-truncated", b"50"),
        ]

    def test_related_of_exactly_100_is_not_truncated(self):
        event = _build(related=_related(100))
        assert len(json.loads(event.value)["related"]) == 100
        assert event.related_dropped == 0
        assert event.headers == [("prefect-event", b"prefect.test.event")]

    def test_event_of_exactly_1_5_mb_with_prefects_received_field_passes_one_more_byte_fails(self):
        """Prefect's server measures the event with `,"received":"...123456Z"` (41 bytes) added."""
        base = len(_build(payload={"x": ""}).value)
        exact = _build(payload={"x": "a" * (1_500_000 - 41 - base)})
        assert len(exact.value) == 1_499_959
        with pytest.raises(Invalid) as err:
            _build(payload={"x": "a" * (1_500_000 - 41 + 1 - base)})
        assert (err.value.code, err.value.reason) == (
            "event_too_large",
            "prefect.test.event for prefect.test.1 would be 1499960 bytes, 1500001 with the received "
            "time Prefect's server adds, over its limit of 1500000",
        )

    def test_oversized_event_through_the_pipeline_is_a_dead_letter(self):
        outcome = ArtifactPipeline().process(
            h.encode(h.create(key=None, description="x" * 1_500_000))
        )
        assert outcome.events == []
        assert outcome.dead_letter is not None
        assert outcome.dead_letter.code == "event_too_large"
        assert "prefect.artifact.created" in outcome.dead_letter.reason

    def test_500_labels_pass_501_fail(self):
        labels = {"prefect.resource.id": "prefect.test.1"}
        labels.update({f"label.{i}": "v" for i in range(499)})
        assert len(json.loads(_build(resource=labels).value)["resource"]) == 500
        labels["label.499"] = "v"
        with pytest.raises(Invalid) as err:
            _build(resource=labels)
        assert err.value.code == "too_many_labels"

    def test_501_labels_on_a_related_resource_fail(self):
        entry = h.rel("prefect.thing.1", "thing")
        entry.update({f"label.{i}": "v" for i in range(499)})
        with pytest.raises(Invalid) as err:
            _build(related=[entry])
        assert err.value.code == "too_many_labels"

    def test_name_over_1024_characters_fails(self):
        _build(name="n" * 1024)
        with pytest.raises(Invalid) as err:
            _build(name="n" * 1025)
        assert err.value.code == "name_too_long"

    def test_empty_resource_id_fails(self):
        with pytest.raises(Invalid):
            _build(resource={"prefect.resource.id": ""})


class TestRecord:
    def test_record_key_is_the_resource_id(self):
        for event in ArtifactPipeline().process(KNOWN_INPUT).events:
            assert event.key == json.loads(event.value)["resource"]["prefect.resource.id"].encode()
            assert event.key == event.resource_id.encode()

    def test_header_names_the_event(self):
        for event in ArtifactPipeline().process(KNOWN_INPUT).events:
            assert event.headers == [("prefect-event", json.loads(event.value)["event"].encode())]

    def test_asset_record_key_is_the_asset_key(self):
        message = h.task_result(downstream=[h.materialized("s3://bucket/äpfel")])
        [event] = AssetPipeline().process(h.encode(message)).events
        assert event.key == "s3://bucket/äpfel".encode()
        assert event.headers == [("prefect-event", b"prefect.asset.materialization.succeeded")]
