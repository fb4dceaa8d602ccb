"""Both Kafka clients read a record batch compressed with each codec Kafka has, as an app's
producer (or a topic's compression.type) writes it. Without lz4, snappy and zstd installed
(cramjam for aiokafka; lz4, python-snappy and zstandard for kafka-python) such a batch
stopped the stream processor's fetcher for every tenant."""

from __future__ import annotations

import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder

pytestmark = pytest.mark.timeout(60)

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
"""Kafka's compression attribute of a v2 record batch."""
VALUE = b'{"correlation_id": "x", "body": {"messages": [{"role": "user", "content": "%s"}]}}' % (
    b"Hi! " * 100  # long enough to compress: a batch compression would make larger goes plain
)


@pytest.mark.parametrize("codec", CODECS)
def test_aiokafka_reads_a_batch_compressed_with(codec: str) -> None:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(0, timestamp=None, key=b"k", value=VALUE, headers=[])
    batch = DefaultRecordBatch(bytes(builder.build()))
    assert batch.compression_type == CODECS[codec]
    assert [record.value for record in batch] == [VALUE]


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_reads_a_batch_compressed_with(codec: str) -> None:
    builder = MemoryRecordsBuilder(magic=2, compression_type=CODECS[codec], batch_size=1 << 20)
    builder.append(timestamp=None, key=b"k", value=VALUE, headers=[])
    builder.close()
    batch = MemoryRecords(builder.buffer()).next_batch()
    assert batch.compression_type == CODECS[codec]
    assert [record.value for record in batch] == [VALUE]
