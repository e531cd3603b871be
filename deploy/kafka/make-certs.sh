#!/usr/bin/env bash
# A CA and the brokers' PEM keystore for docker-compose.sasl-ssl.yml, as the tests make theirs
# (tests/kafka_cluster.py make_tls_pem): ca.pem (give it to tetrapipe as kafka-ssl-cafile) and
# broker-keystore.pem (PKCS#8 key, certificate for kafka-1..3 and localhost, CA), in DIR.
#   deploy/kafka/make-certs.sh [DIR]   (default deploy/kafka/secrets; keep ca.key offline)
set -euo pipefail
DIR=${1:-"$(dirname "$0")/secrets"}
mkdir -p "$DIR"
cd "$DIR"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 825 \
  -subj "/CN=tetrapipe-kafka-ca" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=kafka" 2>/dev/null
echo "subjectAltName=DNS:kafka-1,DNS:kafka-2,DNS:kafka-3,DNS:localhost,IP:127.0.0.1" > san.ext
openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem \
  -days 825 -extfile san.ext 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.p8
cat broker.p8 broker.pem ca.pem > broker-keystore.pem
rm -f broker.csr broker.key broker.p8 san.ext ca.srl
chmod 644 ca.pem broker.pem
chmod 640 broker-keystore.pem  # the Kafka image runs as uid 1000: chown it to 1000 if it cannot read
echo "make-certs: $PWD/ca.pem and $PWD/broker-keystore.pem"
