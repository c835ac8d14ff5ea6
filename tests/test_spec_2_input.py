"""SPEC §2 Input messages: what is accepted, and every rejection with its reason code."""

from __future__ import annotations

import json

import pytest
import spec_helpers as h

from streams.pipeline import ArtifactPipeline, AssetPipeline

A = h.uid(0xA1)


def _events(messages, stream="artifacts"):
    return h.run_artifacts(messages) if stream == "artifacts" else h.run_assets(messages)


def _rejected(message, stream="artifacts"):
    pipeline = ArtifactPipeline() if stream == "artifacts" else AssetPipeline()
    outcome = pipeline.process(h.encode(message))
    assert outcome.events == []
    assert outcome.dead_letter is not None, "message was accepted"
    return outcome.dead_letter


# --- 2. accepted forms ------------------------------------------------------------------------


class TestTimestamps:
    @pytest.mark.parametrize(
        "given, rendered",
        [
            ("2026-11-24T10:00:00.123456Z", "2026-11-24T10:00:00.123456Z"),
            ("2026-11-24T10:00:00.123456+00:00", "2026-11-24T10:00:00.123456Z"),
            ("2026-11-24T10:00:00.123456z", "2026-11-24T10:00:00.123456Z"),
            ("2026-11-24T10:00:00Z", "2026-11-24T10:00:00.000000Z"),
            ("2026-11-24T10:00:00.5+00:00", "2026-11-24T10:00:00.500000Z"),
            ("2026-11-24T12:30:00.123456+02:30", "2026-11-24T10:00:00.123456Z"),
            ("2026-11-24T05:00:00.000001-05:00", "2026-11-24T10:00:00.000001Z"),
            ("2026-11-25T01:00:00+15:00", "2026-11-24T10:00:00.000000Z"),
            ("2026-11-24T10:00:00", "2026-11-24T10:00:00.000000Z"),  # naive = UTC, like Prefect
            ("2026-11-24t10:00:00.5Z", "2026-11-24T10:00:00.500000Z"),
            ("2026-11-24 10:00:00.5Z", "2026-11-24T10:00:00.500000Z"),
            ("2026-11-24T10:00:00,5Z", "2026-11-24T10:00:00.500000Z"),
            ("2026-11-24T10:00:00.1234569Z", "2026-11-24T10:00:00.123456Z"),  # the rest dropped
            ("2026-11-24T10:00:00-00:00", "2026-11-24T10:00:00.000000Z"),
            ("2026-11-24T12:30:00+0230", "2026-11-24T10:00:00.000000Z"),
            ("2026-11-24T12:00:00+02", "2026-11-24T10:00:00.000000Z"),
            ("2026-11-24T10:30Z", "2026-11-24T10:30:00.000000Z"),
            ("2026-11-24T10Z", "2026-11-24T10:00:00.000000Z"),
            ("20261124T100000.5Z", "2026-11-24T10:00:00.500000Z"),
            ("2026-W48-2T10:00:00Z", "2026-11-24T10:00:00.000000Z"),
        ],
        ids=["Z", "+00:00", "lower-z", "no-fraction", "short-fraction", "+02:30", "-05:00",
             "+15:00-crosses-date", "naive", "lower-t", "space", "comma", "7-digits", "-00:00",
             "+0230", "+02", "minutes", "hour", "basic", "week-date"],
    )
    def test_occurred_forms_render_as_utc(self, given, rendered):
        [event] = _events([h.create(A, key=None, occurred=given)])
        assert event["occurred"] == rendered

    def test_offsets_convert_created_for_latest_ordering(self):
        """created 11:00+02:00 (= 09:00Z) is OLDER than created 09:30Z."""
        first = h.create(h.uid(1), at=0)
        first["artifact"]["created"] = "2026-11-24T09:30:00Z"
        older = h.create(h.uid(2), at=1)
        older["artifact"]["created"] = "2026-11-24T11:00:00+02:00"
        assert h.names(_events([first, older])) == [
            "prefect.artifact-collection.created",
            "prefect.artifact.created",
            "prefect.artifact.created",
        ]

    def test_z_and_plus_zero_are_the_same_instant_in_the_id(self):
        [a] = _events([h.create(A, key=None, occurred="2026-11-24T10:00:00.5Z")])
        [b] = _events([h.create(A, key=None, occurred="2026-11-24T10:00:00.5+00:00")])
        assert a["occurred"] == b["occurred"]
        assert a["id"][:13] == b["id"][:13]  # same 48-bit millisecond prefix


class TestUnknownFieldsIgnored:
    def test_artifact_message(self):
        plain = h.create(A)
        extra = h.create(A, shiny=True)
        extra["extra_top"] = {"x": [1, 2]}
        extra["context"]["extra_ctx"] = "?"
        extra["context"]["flow_run"]["extra"] = 1
        assert h.strip_ids(_events([extra])) == h.strip_ids(_events([plain]))

    def test_update_changes_ignore_unknown_fields(self):
        [event] = _events([h.update(A, {"data": 1, "name": "not updatable", "key": "k"})])
        assert event["payload"] == {"data": 1}

    def test_task_result(self):
        plain = h.task_result(downstream=[h.materialized("s3://x", {"m": 1}, name="X")])
        extra = h.task_result(
            downstream=[{**h.materialized("s3://x", {"m": 1}, name="X"), "more": 1}],
            retries=3,
        )
        extra["state"]["timestamp"] = "whenever"
        extra["downstream_assets"][0]["properties"]["colour"] = "red"
        assert h.strip_ids(_events([extra], "assets")) == h.strip_ids(_events([plain], "assets"))


class TestContextForms:
    def test_context_null_gives_no_related(self):
        [event] = _events([h.create(A, key=None, ctx=None)])
        assert event["related"] == []

    def test_context_absent_gives_no_related(self):
        [event] = _events([h.create(A, key=None, drop=["context"])])
        assert event["related"] == []

    def test_context_empty_object(self):
        [event] = _events([h.create(A, key=None, ctx={})])
        assert event["related"] == []

    def test_partial_context_only_flow(self):
        ctx = {"flow": {"id": h.FLOW, "name": "my-flow"}}
        [event] = _events([h.create(A, key=None, ctx=ctx)])
        assert event["related"] == [
            {
                "prefect.resource.id": "prefect.flow." + h.FLOW,
                "prefect.resource.role": "flow",
                "prefect.resource.name": "my-flow",
            }
        ]

    def test_parts_null_and_tags_null(self):
        ctx = {"flow_run": None, "task_run": None, "tags": None,
               "work_pool": {"id": h.uid(9), "name": "pool"}}
        [event] = _events([h.create(A, key=None, ctx=ctx)])
        assert event["related"] == [
            {
                "prefect.resource.id": "prefect.work-pool." + h.uid(9),
                "prefect.resource.role": "work-pool",
                "prefect.resource.name": "pool",
            }
        ]


class TestUpperCaseUuids:
    def test_artifact_ids_rendered_lower_case(self):
        upper = A.upper()
        msg = h.create(upper, flow_run_id=h.FLOW_RUN.upper(), task_run_id=h.TASK_RUN.upper())
        msg["context"]["flow_run"]["id"] = h.FLOW_RUN.upper()
        coll, created = _events([msg])
        assert created["resource"]["prefect.resource.id"] == "prefect.artifact." + A
        assert coll["related"] == [
            h.rel("prefect.artifact." + A, "latest"),
            h.rel("prefect.flow-run." + h.FLOW_RUN, "flow-run"),
            h.rel("prefect.task-run." + h.TASK_RUN, "task-run"),
        ]
        assert created["related"][0]["prefect.resource.id"] == "prefect.flow-run." + h.FLOW_RUN

    def test_upper_and_lower_case_are_the_same_artifact(self):
        events = _events([h.create(A.upper()), h.delete(A.lower())])
        assert h.names(events)[-1] == "prefect.artifact-collection.deleted"

    def test_task_run_ids_case_insensitive_for_lineage(self):
        a, c = h.uid(0xA), h.uid(0xC)
        events = _events(
            [
                h.task_result(a.upper(), downstream=[h.materialized("x")]),
                h.task_result(c, downstream=[h.materialized("y")], upstream_runs=[a.lower()]),
            ],
            "assets",
        )
        assert h.names(events)[1] == "prefect.asset.referenced"


class TestRecurringContext:
    """A run context recurs in every message of its flow run: each one is still checked whole."""

    def test_the_same_part_again_gives_the_same_related_entry(self):
        first, again = _events([h.create(h.uid(1), key=None), h.create(h.uid(2), key=None)])
        assert again["related"] == first["related"]

    def test_a_bad_id_under_a_name_seen_before_is_rejected(self):
        _events([h.create(A, key=None, ctx=h.context(flow_run=h.FLOW_RUN))])
        why = _rejected(h.create(h.uid(2), key=None, ctx=h.context(flow_run=h.FLOW_RUN + "0")))
        assert (why.code, why.reason.split(":")[0]) == (
            "invalid_uuid", "context.flow_run.id is not a canonical UUID"
        )

    def test_an_id_seen_upper_case_then_lower_case_is_one_flow_run(self):
        upper, lower = _events(
            [
                h.create(h.uid(1), key=None, ctx=h.context(flow_run=h.FLOW_RUN.upper())),
                h.create(h.uid(2), key=None, ctx=h.context(flow_run=h.FLOW_RUN)),
            ]
        )
        assert upper["related"][0]["prefect.resource.id"] == "prefect.flow-run." + h.FLOW_RUN
        assert lower["related"] == upper["related"]


# --- 2. rejections ----------------------------------------------------------------------------


NOT_JSON = [
    (b"", "empty"),
    (b"not json", "text"),
    (b"{'op': 'create'}", "single-quotes"),
    (b'{"op": "create",}', "trailing-comma"),
    (b"\xff\xfe{}", "not-utf8"),
    (b'{"op": "delete", "occurred": NaN}', "nan"),
    (b'{"a": 1e400}', "infinite-number"),
    (b'{"a": "\\ud800"}', "lone-surrogate"),
    (b'{"op": "create"', "truncated"),
]


@pytest.mark.parametrize("stream", ["artifacts", "assets"])
@pytest.mark.parametrize("raw", [r for r, _ in NOT_JSON], ids=[i for _, i in NOT_JSON])
def test_not_json(stream, raw):
    why = _rejected(raw, stream)
    assert why.code == "invalid_json"
    assert why.reason.startswith("not UTF-8 JSON")


@pytest.mark.parametrize("stream", ["artifacts", "assets"])
@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"create"', b"42", b"null", b"true"])
def test_not_an_object(stream, raw):
    why = _rejected(raw, stream)
    assert why.code == "wrong_type"
    assert why.reason.startswith("message must be a JSON object, got ")


WIDE = {
    "beyond": 123456789012345678901234567890,
    "u64_max": 2**64 - 1,
    "u64_max_plus_1": 2**64,
    "i64_min": -(2**63),
    "i64_min_minus_1": -(2**63) - 1,
    "float": 1e-7,
    "digits_in_a_string": "1234567890123456789012345",
}
WIDE_BYTES = (
    b'{"beyond":123456789012345678901234567890,"u64_max":18446744073709551615,'
    b'"u64_max_plus_1":18446744073709551616,"i64_min":-9223372036854775808,'
    b'"i64_min_minus_1":-9223372036854775809,"float":1e-7,'
    b'"digits_in_a_string":"1234567890123456789012345"}'
)


def test_integers_beyond_64_bits_are_carried_exactly():
    """orjson alone would turn them into floats; Prefect keeps them (Python's json)."""
    pipeline = ArtifactPipeline()
    [coll, _] = h.raw_events(pipeline, [h.create(A, data=WIDE)])
    assert b'"data":' + WIDE_BYTES + b',"description":' in coll.value
    assert json.loads(coll.value)["payload"]["data"] == WIDE
    [updated] = h.raw_events(pipeline, [h.update(A, {"data": [WIDE]})])
    assert b'"payload":{"data":[' + WIDE_BYTES + b"]}" in updated.value
    [deleted] = h.raw_events(pipeline, [h.delete(A, at=2)])  # the PATCHed data, from the state
    assert b'"data":[' + WIDE_BYTES + b'],"description":' in deleted.value


@pytest.mark.parametrize("data", [2**64, -(2**63) - 1], ids=["above", "below"])
def test_a_wide_integer_as_the_whole_data_is_carried_exactly(data):
    [coll, _] = h.raw_events(ArtifactPipeline(), [h.create(A, data=data)])
    assert b'"data":' + str(data).encode() + b',"description":' in coll.value


BEYOND_DOUBLE = 7 * 10**400 + 1  # 401 digits: orjson calls it infinity, Python's json reads it
BEYOND_DOUBLE_BYTES = str(BEYOND_DOUBLE).encode()


def test_integers_beyond_any_double_are_carried_exactly_by_artifact_events():
    pipeline = ArtifactPipeline()
    data = {"n": BEYOND_DOUBLE, "m": -BEYOND_DOUBLE, "f": 0.5, "w": 2**64}
    n = BEYOND_DOUBLE_BYTES
    data_bytes = b'{"n":' + n + b',"m":-' + n + b',"f":0.5,"w":18446744073709551616}'
    [coll, _] = h.raw_events(pipeline, [h.create(A, data=data)])
    assert b'"data":' + data_bytes + b',"description":' in coll.value
    [updated] = h.raw_events(pipeline, [h.update(A, {"data": BEYOND_DOUBLE})])
    assert b'"payload":{"data":' + BEYOND_DOUBLE_BYTES + b"}," in updated.value
    [deleted] = h.raw_events(pipeline, [h.delete(A, at=2)])  # the PATCHed data, from the state
    assert b'"data":' + BEYOND_DOUBLE_BYTES + b',"description":' in deleted.value
    assert json.loads(deleted.value)["payload"]["data"] == BEYOND_DOUBLE


def test_integers_beyond_any_double_are_carried_exactly_by_materializations():
    message = h.task_result(downstream=[h.materialized("s3://d", {"rows": BEYOND_DOUBLE})])
    [event] = h.raw_events(AssetPipeline(), [message])
    assert b'"payload":{"rows":' + BEYOND_DOUBLE_BYTES + b"}," in event.value


@pytest.mark.parametrize("stream", ["artifacts", "assets"])
def test_an_integer_beyond_any_double_in_an_ignored_field_is_ignored(stream):
    plain = h.create(A) if stream == "artifacts" else h.task_result(downstream=[h.materialized("s3://d")])
    extra = {**plain, "ignored": [BEYOND_DOUBLE]}
    assert h.strip_ids(_events([extra], stream)) == h.strip_ids(_events([plain], stream))


@pytest.mark.parametrize("stream", ["artifacts", "assets"])
@pytest.mark.parametrize(
    "rest, reason",
    [
        (b'"x": NaN}', "number is infinity when parsed as double: line 1 column 7 (char 6)"),
        (b'"x": -Infinity}', "number is infinity when parsed as double: line 1 column 7 (char 6)"),
        (b'"x": 1e400}', "number is infinity when parsed as double: line 1 column 7 (char 6)"),
        (b'"x": "\\ud800"}', "number is infinity when parsed as double: line 1 column 7 (char 6)"),
        (b'"\\udfff": 1}', "number is infinity when parsed as double: line 1 column 7 (char 6)"),
        (b'"x": "\xff"}', "str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)"),
        (b'"x": ' + b"[" * 1100 + b"]" * 1100 + b"}",
         "number is infinity when parsed as double: line 1 column 7 (char 6)"),
    ],
    ids=["NaN", "-Infinity", "1e400", "lone-surrogate", "lone-surrogate-key", "invalid-utf-8", "too-deep"],
)
def test_an_integer_beyond_any_double_does_not_let_in_what_orjson_refuses(stream, rest, reason):
    why = _rejected(b'{"n": ' + BEYOND_DOUBLE_BYTES + b", " + rest, stream)
    assert str(why) == "invalid_json: not UTF-8 JSON: " + reason


def test_a_json_document_in_utf16_is_refused_even_with_an_integer_beyond_any_double():
    why = _rejected(f'{{"n": {BEYOND_DOUBLE}}}'.encode("utf-16"))
    assert str(why) == (
        "invalid_json: not UTF-8 JSON: str is not valid UTF-8: surrogates not allowed: "
        "line 1 column 1 (char 0)"
    )


@pytest.mark.parametrize("stream", ["artifacts", "assets"])
def test_a_wide_integer_does_not_let_in_what_orjson_refuses(stream):
    why = _rejected(b'{"n": 123456789012345678901234567890, "x": NaN}', stream)
    assert why.code == "invalid_json"


def test_a_wide_integer_where_a_string_belongs_is_a_number_in_the_reason():
    why = _rejected(_set(h.delete(A), 123456789012345678901234567890, "artifact_id"))
    assert why.reason == "artifact_id must be a UUID string, got number"


def test_a_wide_integer_in_a_message_nested_past_pythons_json_keeps_orjsons_reading():
    """Python's json stops near 1,000 levels, orjson reads 1,024: such a message is processed."""
    raw = h.encode(h.create(A, data={"n": 2**64}))[:-1] + b', "ignored": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    [coll, _] = _events([raw])
    assert coll["payload"]["data"] == {"n": float(2**64)}


def test_too_deep_nesting_is_rejected_up_front():
    """orjson cannot render more than 254 nested levels; such a message is refused, not crashed."""
    why = _rejected(h.create(A, data=h.nested(253)))
    assert why.code == "too_deep"
    ok = h.nested(252)
    assert h.names(_events([h.create(A, data=ok)]))[0] == "prefect.artifact-collection.created"


@pytest.mark.parametrize("levels", [253, 254, 600])
def test_an_unkeyed_creates_data_reaches_no_event_so_it_may_nest_deeper(levels):
    """artifact.created leaves data out and an unkeyed artifact joins no collection."""
    message = h.create(A, key=None, data=h.nested(levels))
    [event] = _events([message])
    h.check_event_id(event)
    del event["id"]
    assert event == {
        "occurred": message["occurred"],
        "event": "prefect.artifact.created",
        "resource": {"prefect.resource.id": "prefect.artifact." + A},
        "related": h.ctx_related(message["context"]),
        "payload": {"key": None, "type": "markdown", "description": message["artifact"]["description"]},
        "follows": None,
    }


TASK_RUN = h.uid(0x7B, "7a")


def test_unknown_fields_are_ignored_however_deep_they_nest():
    """Only what a message carries into its events must fit orjson's 254 levels; an extra field
    nested deeper is ignored like any other (orjson reads up to 1024)."""
    deep = h.nested(600)
    create = {**h.create(A, data="d"), "extra": deep}
    create["artifact"]["also_extra"] = deep
    assert h.names(_events([create])) == [
        "prefect.artifact-collection.created", "prefect.artifact.created",
    ]
    update = h.update(A, {"description": "d", "unknown": deep})
    assert h.names(_events([update])) == ["prefect.artifact.updated"]
    result = {**h.task_result(TASK_RUN, downstream=[h.materialized("s3://y", {"m": 1})]), "extra": deep}
    result["downstream_assets"][0]["extra"] = deep
    assert h.names(_events([result], "assets")) == ["prefect.asset.materialization.succeeded"]


@pytest.mark.parametrize(
    ("message", "stream", "where", "limit"),
    [
        (lambda d: h.update(A, {"data": d(253)}), "artifacts", "changes.data", 252),
        (lambda d: h.task_result(TASK_RUN, downstream=[h.materialized("s3://y", {"m": d(253)})]), "assets",
         "downstream_assets[0].metadata", 253),
    ],
    ids=["update-data", "materialization-metadata"],
)
def test_values_carried_into_events_are_held_to_orjsons_depth(message, stream, where, limit):
    why = _rejected(message(h.nested), stream)
    assert (why.code, why.reason) == (
        "too_deep",
        f"{where} nests objects/arrays more than {limit} levels deep: its events could not be written",
    )
    fits = message(lambda levels: h.nested(levels - 1))
    assert _events([fits], stream), "one level less is accepted"


def _without(message, *path):
    target = message
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return message


MISSING_ARTIFACT = [
    (lambda: _without(h.create(), "op"), "op is missing"),
    (lambda: _without(h.create(), "occurred"), "occurred is missing"),
    (lambda: _without(h.create(), "artifact"), "artifact is missing"),
    (lambda: _without(h.create(), "artifact", "id"), "artifact.id is missing"),
    (lambda: _without(h.create(), "artifact", "created"), "artifact.created is missing"),
    (lambda: _without(h.update(), "artifact_id"), "artifact_id is missing"),
    (lambda: _without(h.update(), "changes"), "changes is missing"),
    (lambda: _without(h.delete(), "artifact_id"), "artifact_id is missing"),
    (lambda: _without(h.delete(), "occurred"), "occurred is missing"),
    (lambda: _without(h.create(ctx=h.context()), "context", "flow_run", "id"),
     "context.flow_run.id is missing"),
    (lambda: _without(h.create(ctx=h.context()), "context", "flow", "name"),
     "context.flow.name is missing"),
]


@pytest.mark.parametrize(
    "build, reason", MISSING_ARTIFACT, ids=[r.split()[0] for _, r in MISSING_ARTIFACT]
)
def test_artifact_missing_field(build, reason):
    why = _rejected(build())
    assert (why.code, why.reason) == ("missing_field", reason)


MISSING_ASSET = [
    "task_run_id", "occurred", "state", "downstream_assets", "upstream_assets",
    "upstream_task_run_ids",
]


@pytest.mark.parametrize("field", MISSING_ASSET)
def test_task_result_missing_field(field):
    why = _rejected(h.task_result(drop=[field]), "assets")
    assert (why.code, why.reason) == ("missing_field", f"{field} is missing")


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: _without(h.task_result(), "state", "type"), "state.type is missing"),
        (lambda: _without(h.task_result(), "state", "name"), "state.name is missing"),
        (lambda: _without(h.task_result(downstream=[h.materialized("x")]),
                          "downstream_assets", 0, "key"), "downstream_assets[0].key is missing"),
        (lambda: _without(h.task_result(upstream=[h.asset("a"), h.asset("b")]),
                          "upstream_assets", 1, "key"), "upstream_assets[1].key is missing"),
    ],
    ids=["state.type", "state.name", "downstream.key", "upstream.key"],
)
def test_task_result_missing_nested_field(build, reason):
    why = _rejected(build(), "assets")
    assert (why.code, why.reason) == ("missing_field", reason)


def _set(message, value, *path):
    target = message
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return message


WRONG_TYPE_ARTIFACT = [
    # (message builder, path to set, bad value, words the reason must contain)
    (h.create, ("op",), 5, "op must be a string"),
    (h.create, ("occurred",), 1764000000, "occurred must be an ISO 8601 string, got number"),
    (h.create, ("occurred",), None, "occurred must be an ISO 8601 string, got null"),
    (h.create, ("artifact",), "x", "artifact must be an object, got string"),
    (h.create, ("artifact",), None, "artifact must be an object, got null"),
    (h.create, ("artifact", "id"), 7, "artifact.id must be a UUID string, got number"),
    (h.create, ("artifact", "key"), 5, "artifact.key must be a string or null, got number"),
    (h.create, ("artifact", "type"), [], "artifact.type must be a string or null, got array"),
    (h.create, ("artifact", "description"), {}, "artifact.description must be a string or null"),
    (h.create, ("artifact", "metadata_"), "x", "artifact.metadata_ must be an object of strings"),
    (h.create, ("artifact", "metadata_"), {"a": 1}, "artifact.metadata_ must be an object of str"),
    (h.create, ("artifact", "flow_run_id"), 1, "artifact.flow_run_id must be a UUID string"),
    (h.create, ("artifact", "task_run_id"), True, "artifact.task_run_id must be a UUID string"),
    (h.create, ("artifact", "created"), 0, "artifact.created must be an ISO 8601 string"),
    (h.create, ("context",), "ctx", "context must be an object or null, got string"),
    (h.create, ("context",), [], "context must be an object or null, got array"),
    (h.create, ("context", "flow_run"), "x", "context.flow_run must be an object or null"),
    (h.create, ("context", "flow", "name"), 5, "context.flow.name must be a string, got number"),
    (h.create, ("context", "flow", "id"), None, "context.flow.id must be a UUID string, got null"),
    (h.create, ("context", "tags"), "a", "context.tags must be a list of strings"),
    (h.create, ("context", "tags"), ["a", 1], "context.tags must be a list of strings"),
    (h.update, ("changes",), [], "changes must be an object, got array"),
    (h.update, ("changes",), None, "changes must be an object, got null"),
    (h.update, ("changes", "description"), 5, "changes.description must be a string or null"),
    (h.update, ("changes", "metadata_"), [], "changes.metadata_ must be an object of strings"),
    (h.update, ("artifact_id",), None, "artifact_id must be a UUID string, got null"),
    (h.update, ("context",), 3, "context must be an object or null, got number"),
    (h.delete, ("artifact_id",), ["x"], "artifact_id must be a UUID string, got array"),
]


@pytest.mark.parametrize(
    "build, path, value, words",
    WRONG_TYPE_ARTIFACT,
    ids=[f"{b.__name__}:{'.'.join(map(str, p))}={v!r}"[:60] for b, p, v, _ in WRONG_TYPE_ARTIFACT],
)
def test_artifact_wrong_type(build, path, value, words):
    why = _rejected(_set(build(), value, *path))
    assert why.code == "wrong_type"
    assert words in why.reason


WRONG_TYPE_ASSET = [
    (("task_run_id",), 5, "task_run_id must be a UUID string"),
    (("flow_run_id",), 5, "flow_run_id must be a UUID string"),
    (("occurred",), [], "occurred must be an ISO 8601 string, got array"),
    (("context",), "x", "context must be an object or null"),
    (("state",), "COMPLETED", "state must be an object, got string"),
    (("state", "type"), None, "state.type must be a string, got null"),
    (("state", "name"), 1, "state.name must be a string, got number"),
    (("downstream_assets",), {}, "downstream_assets must be a list, got object"),
    (("downstream_assets",), None, "downstream_assets must be a list, got null"),
    (("downstream_assets", 0), "s3://x", "downstream_assets[0] must be an object, got string"),
    (("downstream_assets", 0, "key"), 5, "downstream_assets[0].key must be a string"),
    (("downstream_assets", 0, "key"), "", "downstream_assets[0].key must be a non-empty string"),
    (("downstream_assets", 0, "properties"), "p", "downstream_assets[0].properties must be an obj"),
    (("downstream_assets", 0, "properties", "name"), 5, "properties.name must be a string"),
    (("downstream_assets", 0, "properties", "url"), [], "properties.url must be a string"),
    (("downstream_assets", 0, "properties", "owners"), "a", "owners must be a list of strings"),
    (("downstream_assets", 0, "properties", "owners"), [1], "owners must be a list of strings"),
    (("downstream_assets", 0, "metadata"), [], "downstream_assets[0].metadata must be an object"),
    (("upstream_assets",), "x", "upstream_assets must be a list, got string"),
    (("upstream_assets", 0), 1, "upstream_assets[0] must be an object, got number"),
    (("upstream_assets", 0, "properties", "description"), 1, "description must be a string"),
    (("upstream_task_run_ids",), "x", "upstream_task_run_ids must be a list"),
    (("upstream_task_run_ids", 0), 1, "upstream_task_run_ids[0] must be a UUID string"),
    (("materialized_by",), 5, "materialized_by must be a string or null, got number"),
]


@pytest.mark.parametrize(
    "path, value, words",
    WRONG_TYPE_ASSET,
    ids=[f"{'.'.join(map(str, p))}={v!r}"[:60] for p, v, _ in WRONG_TYPE_ASSET],
)
def test_task_result_wrong_type(path, value, words):
    message = h.task_result(
        downstream=[h.materialized("s3://d", {"m": 1}, name="D", owners=["o"])],
        upstream=[h.asset("s3://u", name="U")],
        upstream_runs=[h.uid(0x55)],
    )
    why = _rejected(_set(message, value, *path), "assets")
    assert why.code == "wrong_type"
    assert words in why.reason


BAD_UUIDS = [
    "not-a-uuid",
    "",
    "00000000000040008000000000000001",  # no dashes
    "{00000000-0000-4000-8000-000000000001}",  # braces
    "urn:uuid:00000000-0000-4000-8000-000000000001",
    " 00000000-0000-4000-8000-000000000001",  # leading space
    "00000000-0000-4000-8000-000000000001\n",  # trailing newline
    "00000000-0000-4000-8000-00000000000g",  # not hex
    "00000000-0000-4000-8000-0000000000001",  # one digit too many
    "0000000-00000-4000-8000-000000000001",  # dashes misplaced
]


@pytest.mark.parametrize("bad", BAD_UUIDS, ids=repr)
@pytest.mark.parametrize(
    "where, build",
    [
        ("artifact.id", lambda v: h.create(v)),
        ("artifact.flow_run_id", lambda v: h.create(flow_run_id=v)),
        ("artifact.task_run_id", lambda v: h.create(task_run_id=v)),
        ("artifact_id", lambda v: h.update(v)),
        ("artifact_id", lambda v: h.delete(v)),
        ("context.flow_run.id", lambda v: h.create(ctx=h.context(flow_run=v))),
        ("context.work_pool.id", lambda v: h.update(ctx=h.context(work_pool=v))),
    ],
    ids=["create.id", "create.flow_run_id", "create.task_run_id", "update", "delete",
         "context.flow_run", "context.work_pool"],
)
def test_artifact_invalid_uuid(where, build, bad):
    why = _rejected(build(bad))
    assert why.code == "invalid_uuid"
    assert why.reason.startswith(f"{where} is not a canonical UUID: ")


@pytest.mark.parametrize("bad", BAD_UUIDS[:4], ids=repr)
@pytest.mark.parametrize(
    "where, build",
    [
        ("task_run_id", lambda v: h.task_result(v)),
        ("flow_run_id", lambda v: h.task_result(flow_run_id=v, ctx=None)),
        ("upstream_task_run_ids[1]", lambda v: h.task_result(upstream_runs=[h.uid(1), v])),
        ("context.task_run.id", lambda v: h.task_result(ctx=h.context(task_run=v))),
    ],
    ids=["task_run_id", "flow_run_id", "upstream_task_run_ids", "context.task_run"],
)
def test_task_result_invalid_uuid(where, build, bad):
    why = _rejected(build(bad), "assets")
    assert why.code == "invalid_uuid"
    assert why.reason.startswith(f"{where} is not a canonical UUID: ")


BAD_TIMESTAMPS = [
    "yesterday",
    "",
    "2026-11-24",  # a date is not an instant
    "2026-13-01T00:00:00Z",
    "2026-11-31T00:00:00Z",
    "2026-11-24T25:00:00Z",
    "2026-11-24T10:00:00+25:00",
    "2026-11-24T10:00:00Zjunk",
    # Forms Python's fromisoformat reads but Prefect's Event model refuses:
    "2026-11-24T10:00:00.Z",  # a dot without digits
    "2026-11-24T10:00:00 Z",  # a blank before the zone
    "2026-11-24T10:00:00 +00:00",
    " 2026-11-24T10:00:00Z",  # blanks around the text
    "2026-11-24T10:00:00Z\n",
    "2026-11-24T10:00:00+00:00:30",  # an offset with seconds: the instant would shift
    "2026-11-24T10:00:00+00:00:00.000001",  # ... or with a fraction
    "2026-11-24T10.5Z",  # a fraction of an hour or a minute, read as seconds' fraction
    "2026-11-24T10:30.5Z",
    "2026-11-24T100000Z",  # basic time after an extended date
    "20261124T10:00:00Z",  # extended time after a basic date
    "2026-11-24T1\uff10:00:00Z",  # a digit that is not ASCII (fullwidth zero)
]
# Event times only: `occurred` is rendered and feeds the UUIDv7 id; `created` only ranks.
UNRENDERABLE = [
    "1969-12-31T23:59:59.999999Z",  # before the epoch: no UUIDv7 timestamp
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC: cannot be rendered
]


_CREATED = ("artifact.created", lambda v: _set(h.create(), v, "artifact", "created"))
_OCCURRED = [
    ("occurred", lambda v: h.create(occurred=v)),
    ("occurred", lambda v: _set(h.update(), v, "occurred")),
    ("occurred", lambda v: _set(h.delete(), v, "occurred")),
]
_OCCURRED_IDS = ["create.occurred", "update.occurred", "delete.occurred"]


@pytest.mark.parametrize(
    "where, build, bad",
    [(*w, bad) for w in [*_OCCURRED, _CREATED] for bad in BAD_TIMESTAMPS]
    + [(*w, bad) for w in _OCCURRED for bad in UNRENDERABLE],
    ids=[f"{n}-{bad!r}" for n in [*_OCCURRED_IDS, "create.created"] for bad in BAD_TIMESTAMPS]
    + [f"{n}-{bad!r}" for n in _OCCURRED_IDS for bad in UNRENDERABLE],
)
def test_artifact_invalid_timestamp(where, build, bad):
    why = _rejected(build(bad))
    assert why.code == "invalid_timestamp"
    assert why.reason.startswith(f"{where} is ")
    assert repr(bad[:64]) in why.reason


@pytest.mark.parametrize("created", UNRENDERABLE, ids=repr)
def test_created_outside_1970_to_9999_only_ranks_so_it_is_accepted(created):
    message = _set(h.create(h.uid(1), key="k"), created, "artifact", "created")
    assert h.names(_events([message])) == [
        "prefect.artifact-collection.created",
        "prefect.artifact.created",
    ]


@pytest.mark.parametrize("bad", BAD_TIMESTAMPS + UNRENDERABLE, ids=repr)
def test_task_result_invalid_timestamp(bad):
    why = _rejected(_set(h.task_result(), bad, "occurred"), "assets")
    assert why.code == "invalid_timestamp"
    assert why.reason.startswith("occurred is ")


def test_timestamp_bounds_are_inclusive():
    first = h.create(h.uid(1), key=None, occurred="1970-01-01T00:00:00Z")
    last = h.create(h.uid(2), key=None, occurred="9999-12-31T23:59:59.999999Z")
    a, b = _events([first, last])
    assert a["occurred"] == "1970-01-01T00:00:00.000000Z"
    assert a["id"].startswith("00000000-0000-7")
    assert b["occurred"] == "9999-12-31T23:59:59.999999Z"
    h.check_event_id(b)


@pytest.mark.parametrize("op", ["upsert", "CREATE", "Delete", "", "create "])
def test_unknown_op(op):
    why = _rejected(_set(h.create(), op, "op"))
    assert why.code == "unknown_op"
    assert why.reason == f"op must be create, update or delete, got {op!r}"


def test_reasons_are_one_readable_line():
    for message in (b"{", h.delete("nope"), h.create(occurred="soon"), h.update(drop=["changes"])):
        why = _rejected(message)
        assert why.reason and "\n" not in why.reason
        assert str(why) == f"{why.code}: {why.reason}"
    assert json.loads(json.dumps(why.reason)) == why.reason
