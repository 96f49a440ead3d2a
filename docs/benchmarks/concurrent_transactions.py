"""Back-to-back Kafka transactions with one or two transactional ids per partition.

Counts how often the coordinator refuses AddPartitionsToTxn with
CONCURRENT_TRANSACTIONS (the previous commit's markers not written yet), which
librdkafka retries 20 ms later. A one-off measurement for docs/benchmarks.md:

    pip install confluent-kafka
    python3 docs/benchmarks/concurrent_transactions.py PARTITIONS TRANSACTIONS_PER_PARTITION

against the broker of `scripts/services.sh up` (127.0.0.1:9092). Each run creates
two topics of its own.
"""
import logging
import sys
import threading
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
bs="127.0.0.1:9092"; topic="exp-"+uuid.uuid4().hex[:8]
P=int(sys.argv[1]); N=int(sys.argv[2])
adm=AdminClient({"bootstrap.servers":bs}); adm.create_topics([NewTopic(topic,P,1), NewTopic(topic+"-o",P,1)])[topic].result()
time.sleep(1)
class H(logging.Handler):
    n=0
    def emit(s, r):
        if "concurrent operation" in r.getMessage(): H.n+=1
lg=logging.getLogger("l"); lg.addHandler(H()); lg.setLevel(logging.DEBUG)
def work(part, k, out):
    ps=[Producer({"bootstrap.servers":bs,"transactional.id":f"{topic}-{k}-{part}-{i}","linger.ms":1,"acks":"all","debug":"eos"},logger=lg) for i in range(k)]
    for p in ps: p.init_transactions(10)
    for i in range(N):
        p=ps[i%k]; t=time.perf_counter()
        p.begin_transaction(); p.produce(topic,b"x",partition=part); p.produce(topic+"-o",b"x",partition=part); p.flush(10); p.commit_transaction(10); p.poll(0)
        out.append((time.perf_counter()-t)*1000)
for k in (1,2,1,2):
    H.n=0; out=[]; t=time.perf_counter()
    th=[threading.Thread(target=work,args=(p,k,out)) for p in range(P)]
    [x.start() for x in th]; [x.join() for x in th]
    el=time.perf_counter()-t; out.sort()
    print(f"partitions={P} ids/partition={k}: {len(out)/el:.0f} txn/s, txn p50 {out[len(out)//2]:.1f} p99 {out[int(len(out)*.99)]:.1f} ms, CONCURRENT_TRANSACTIONS {H.n} in {len(out)}")
