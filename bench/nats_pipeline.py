#!/usr/bin/env python3
"""The event-pipeline benchmark's comparison: the same flow through NATS
JetStream. Events are published to a file-backed stream (each publish waits
for JetStream's ack, as an HTTP client waits for Sluice's 202), and three
durable pull consumers (fan-out 3) fetch and ack every event.

Usage: nats_pipeline.py SECONDS CONCURRENCY
Prints one JSON line: {"published": N, "accepted_per_s": ..., "delivered_per_s": ...}.
Needs `nats-server` (Debian) on PATH and `nats-py` (PyPI).
"""

import asyncio
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

PORT = 14222
FAN_OUT = 3
BODY = b'{"n": 1}'


async def quiet(_error):
    pass


async def wait_for_server(url, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await nats.connect(url, max_reconnect_attempts=0, error_cb=quiet)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def consumer_process(index, published, done, delivered):
    """One durable pull consumer in its own process (a Python client is
    CPU-bound; one process each keeps the client from being the limit)."""

    async def consume():
        connection = await nats.connect(f"nats://127.0.0.1:{PORT}")
        subscription = await connection.jetstream().pull_subscribe("events.>", durable=f"c{index}", stream="EVENTS")
        count = 0
        while not (done.is_set() and count >= published.value):
            try:
                messages = await subscription.fetch(512, timeout=0.5)
            except asyncio.TimeoutError:
                continue
            await asyncio.gather(*(message.ack() for message in messages))
            count += len(messages)
        await connection.flush()
        await connection.close()
        delivered.value = count

    asyncio.run(consume())


async def publish(seconds, concurrency):
    url = f"nats://127.0.0.1:{PORT}"
    connection = await wait_for_server(url)
    js = connection.jetstream()
    await js.add_stream(StreamConfig(name="EVENTS", subjects=["events.>"], storage=StorageType.FILE))
    for i in range(FAN_OUT):
        await js.add_consumer(
            "EVENTS", ConsumerConfig(durable_name=f"c{i}", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=65536)
        )
    return connection, js


async def publish_for(js, seconds, concurrency):
    published = 0
    stop = time.monotonic() + seconds

    async def loop():
        nonlocal published
        while time.monotonic() < stop:
            await js.publish("events.bench", BODY)
            published += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return published


def run(seconds, concurrency):
    store = tempfile.mkdtemp(prefix="sluice-bench-nats-")
    server = subprocess.Popen(
        ["nats-server", "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        loop = asyncio.new_event_loop()
        connection, js = loop.run_until_complete(publish(seconds, concurrency))
        published = multiprocessing.Value("q", 0)
        done = multiprocessing.Event()
        counts = [multiprocessing.Value("q", 0) for _ in range(FAN_OUT)]
        consumers = [
            multiprocessing.Process(target=consumer_process, args=(i, published, done, counts[i]))
            for i in range(FAN_OUT)
        ]
        start = time.monotonic()
        for process in consumers:
            process.start()
        sent = loop.run_until_complete(publish_for(js, seconds, concurrency))
        publish_time = time.monotonic() - start
        published.value = sent
        done.set()
        for process in consumers:
            process.join(timeout=300)
        total_time = time.monotonic() - start
        loop.run_until_complete(connection.close())
        assert all(c.value >= sent for c in counts), [c.value for c in counts]
        print(json.dumps({
            "published": sent,
            "accepted_per_s": sent / publish_time,
            "delivered_per_s": sent / total_time,
        }))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    run(float(sys.argv[1]), int(sys.argv[2]))
