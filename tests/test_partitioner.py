"""topology.records' partitioner: exactly Kafka's default one (what producers and aiokafka use)."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from topology.records import murmur2, partition_for, partitioner


@given(st.binary(max_size=300))
def test_murmur2_is_kafkas(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


@given(st.binary(max_size=100), st.integers(min_value=1, max_value=64))
def test_partition_for_is_the_default_partitioners_choice(key: bytes, partitions: int) -> None:
    all_partitions = list(range(partitions))
    expected = DefaultPartitioner()(key, all_partitions, all_partitions)
    assert partition_for(key, partitions) == expected
    assert partitioner(key, all_partitions, all_partitions) == expected


def test_known_values_from_the_java_client() -> None:
    # org.apache.kafka.common.utils.Utils.murmur2 test vectors (UtilsTest.testMurmur2)
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert murmur2(b"foobar") == -790332482 & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") == -985981536 & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-longer-string") == -1486304829 & 0xFFFFFFFF
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971 & 0xFFFFFFFF
    assert murmur2(b"abc") == 479470107


def test_unkeyed_records_go_to_an_available_partition() -> None:
    assert partitioner(None, [0, 1, 2, 3], [2]) == 2
    assert partitioner(None, [0, 1], []) in (0, 1)
