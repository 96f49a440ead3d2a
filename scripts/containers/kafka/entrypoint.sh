#!/bin/sh
# Starts one Apache Kafka node in KRaft combined mode (broker + controller).
#
# Listeners:
#   EXTERNAL :9092   for clients outside the container network; advertised as
#                    $KAFKA_ADVERTISED_EXTERNAL (default localhost:9092), so publish
#                    the port on the host port you advertise
#   INTERNAL :19092  for brokers and clients on the container network; advertised as
#                    $KAFKA_INTERNAL_HOST:19092 (default: the container's hostname)
#   CONTROLLER :9093 the KRaft quorum
#
# Environment:
#   KAFKA_NODE_ID     node id (default 1)
#   KAFKA_VOTERS      controller.quorum.voters (default "$KAFKA_NODE_ID@$host:9093":
#                     one node); for three nodes "1@kafka-1:9093,2@kafka-2:9093,..."
#   KAFKA_CLUSTER_ID  the KRaft cluster id; every node of a cluster needs the same
#                     (default: a fixed id, fine for a one-node cluster)
#   KAFKA_HEAP        JVM heap options (default -Xms256m -Xmx512m)
#   KAFKA_CFG_<NAME>  any broker setting: KAFKA_CFG_NUM_PARTITIONS=3 becomes
#                     num.partitions=3 (lower case, _ becomes .)
set -eu
host="${KAFKA_INTERNAL_HOST:-$(hostname)}"
node_id="${KAFKA_NODE_ID:-1}"
voters="${KAFKA_VOTERS:-${node_id}@${host}:9093}"
cluster_id="${KAFKA_CLUSTER_ID:-dHJpYnV0YXJ5LXRlc3QAAA}"
# Replication of the internal topics follows the cluster size.
n=$(echo "$voters" | tr ',' '\n' | wc -l)
min_isr=1
[ "$n" -ge 3 ] && min_isr=2
conf=/var/lib/kafka/server.properties
cat >"$conf" <<PROPS
process.roles=broker,controller
node.id=${node_id}
controller.quorum.voters=${voters}
listeners=EXTERNAL://0.0.0.0:9092,INTERNAL://0.0.0.0:19092,CONTROLLER://0.0.0.0:9093
advertised.listeners=EXTERNAL://${KAFKA_ADVERTISED_EXTERNAL:-localhost:9092},INTERNAL://${host}:19092
listener.security.protocol.map=EXTERNAL:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
log.dirs=/var/lib/kafka/data
offsets.topic.replication.factor=${n}
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=${n}
transaction.state.log.min.isr=${min_isr}
transaction.state.log.num.partitions=12
default.replication.factor=${n}
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
num.partitions=1
PROPS
env | sed -n 's/^KAFKA_CFG_\([^=]*\)=\(.*\)$/\1 \2/p' | while read -r name value; do
  echo "$(echo "$name" | tr 'A-Z_' 'a-z.')=${value}" >>"$conf"
done
cat >/var/lib/kafka/log4j2.properties <<'PROPS'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = STDOUT
logger.kafka_request.name = kafka.request.logger
logger.kafka_request.level = WARN
logger.state_change.name = state.change.logger
logger.state_change.level = WARN
PROPS
java_opts="-Dlog4j2.configurationFile=/var/lib/kafka/log4j2.properties -Djava.awt.headless=true"
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  # shellcheck disable=SC2086
  java $java_opts -cp '/opt/kafka/libs/*' kafka.tools.StorageTool format \
    --ignore-formatted -t "$cluster_id" -c "$conf"
fi
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP:--Xms256m -Xmx512m} -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -XX:+ExplicitGCInvokesConcurrent $java_opts -cp '/opt/kafka/libs/*' kafka.Kafka "$conf"
