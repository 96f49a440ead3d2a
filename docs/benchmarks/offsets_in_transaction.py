"""Back-to-back Kafka transactions with and without the consumed offsets in them.

Each of PARTITIONS threads runs TRANSACTIONS transactions on its own partition, two
transactional ids in turn (as the processor does), each writing one record to an
events-like and one to an outcomes-like topic; with offsets, the transaction also
carries a consumed offset (`send_offsets_to_transaction`, a consumer group of its
own). Prints transactions/s and the p50/p99 of one transaction. A one-off
measurement for docs/benchmarks.md:

    pip install confluent-kafka
    python3 docs/benchmarks/offsets_in_transaction.py PARTITIONS TRANSACTIONS_PER_PARTITION

against the broker of `scripts/services.sh up` (127.0.0.1:9092). Each run creates
three topics of its own.
"""
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bs = "127.0.0.1:9092"
topic = "exp-" + uuid.uuid4().hex[:8]
P = int(sys.argv[1])
N = int(sys.argv[2])
adm = AdminClient({"bootstrap.servers": bs})
for f in adm.create_topics(
    [NewTopic(topic, P, 1), NewTopic(topic + "-o", P, 1), NewTopic(topic + "-c", P, 1)]
).values():
    f.result()
time.sleep(1)


def work(part, offsets, out):
    c = Consumer({"bootstrap.servers": bs, "group.id": f"{topic}-g", "enable.auto.commit": False})
    c.assign([TopicPartition(topic + "-c", part, 0)])
    md = c.consumer_group_metadata()
    ps = [
        Producer({"bootstrap.servers": bs, "transactional.id": f"{topic}-{offsets}-{part}-{i}",
                  "linger.ms": 1, "acks": "all"})
        for i in range(2)
    ]
    for p in ps:
        p.init_transactions(10)
    for i in range(N):
        p = ps[i % 2]
        t = time.perf_counter()
        p.begin_transaction()
        p.produce(topic, b"x", partition=part)
        p.produce(topic + "-o", b"x", partition=part)
        p.flush(10)
        if offsets:
            p.send_offsets_to_transaction([TopicPartition(topic + "-c", part, i + 1)], md, 10)
        p.commit_transaction(10)
        p.poll(0)
        out.append((time.perf_counter() - t) * 1000)
    c.close()


for offsets in (True, False, True, False):
    out = []
    t = time.perf_counter()
    th = [threading.Thread(target=work, args=(p, offsets, out)) for p in range(P)]
    [x.start() for x in th]
    [x.join() for x in th]
    el = time.perf_counter() - t
    out.sort()
    print(f"partitions={P} offsets={offsets}: {len(out) / el:.0f} txn/s, "
          f"txn p50 {out[len(out) // 2]:.1f} p99 {out[int(len(out) * .99)]:.1f} ms")
