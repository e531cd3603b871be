#!/usr/bin/env bash
# Installs Apache Kafka (KRaft, no ZooKeeper) for the tests and bench/, idempotently, from Maven
# Central with Debian's Maven: the broker jars (kafka_2.13), the command-line tools (kafka-tools)
# and log4j2, copied into /var/cache/tetrapipe-build/kafka/<version>/libs. Debian's kcat too.
# Run it with: java -cp '<dir>/libs/*' kafka.Kafka server.properties (see tests/kafka_cluster.py).
set -euo pipefail
KAFKA_VERSION=${TETRAPIPE_KAFKA_VERSION:-4.1.1}
LOG4J_VERSION=2.24.3
SLF4J_VERSION=2.0.17  # log4j-slf4j2-impl binds to slf4j 2; a dependency would pull 1.7 (no logs)
RECIPE="kafka=$KAFKA_VERSION log4j=$LOG4J_VERSION slf4j=$SLF4J_VERSION"
CACHE=${TETRAPIPE_BUILD_CACHE:-/var/cache/tetrapipe-build}/kafka
DEST="$CACHE/$KAFKA_VERSION"

need_pkgs=()
command -v java >/dev/null 2>&1 || need_pkgs+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_pkgs+=(maven)
command -v kcat >/dev/null 2>&1 || need_pkgs+=(kcat)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup-kafka: installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [ -f "$DEST/.complete" ] && [ "$(cat "$DEST/.complete")" = "$RECIPE" ]; then
  echo "setup-kafka: ready ($DEST)"
  exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tetrapipe</groupId><artifactId>kafka-for-tests</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
echo "setup-kafka: fetching Apache Kafka $KAFKA_VERSION with Maven"
mvn -q -B -f "$work/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
  dependency:copy-dependencies -DoutputDirectory="$work/libs" -DincludeScope=runtime
cat > "$work/log4j2.yaml" <<'LOG'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout: {pattern: "[%d] %p %m (%c)%n"}
  Loggers:
    Root: {level: WARN, AppenderRef: [{ref: STDOUT}]}
    Logger:
      - {name: kafka.server.KafkaRaftServer, level: INFO}
      - {name: kafka.server.BrokerServer, level: INFO}
LOG
rm -rf "$DEST"
mkdir -p "$DEST"
mv "$work/libs" "$DEST/libs"
mv "$work/log4j2.yaml" "$DEST/log4j2.yaml"
java -cp "$DEST/libs/*" kafka.tools.StorageTool random-uuid >/dev/null \
  || { echo "setup-kafka: the Kafka jars do not run" >&2; exit 1; }
echo "$RECIPE" > "$DEST/.complete"
echo "setup-kafka: ready ($DEST, $(ls "$DEST/libs" | wc -l) jars)"
