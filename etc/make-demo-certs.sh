#!/bin/sh
# Demo certificates for etc/tls_termination.yaml, written to
# /tmp/pyenvoy-demo-certs: a CA, a server certificate for localhost and
# 127.0.0.1, and a client certificate with a SPIFFE URI SAN.  For demos and
# tests only (keys unencrypted, 2-day validity).
#   sh etc/make-demo-certs.sh
set -eu
D=/tmp/pyenvoy-demo-certs
mkdir -p "$D"
cd "$D"
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/O=pyenvoy demo/CN=pyenvoy demo CA" -keyout ca.key -out ca.pem 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/O=pyenvoy demo/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile server.ext -out server.pem 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/O=pyenvoy demo/CN=demo client" -keyout client.key -out client.csr 2>/dev/null
printf 'subjectAltName=URI:spiffe://demo/client\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile client.ext -out client.pem 2>/dev/null

rm -f server.csr client.csr server.ext client.ext ca.srl
chmod 644 ca.pem server.pem client.pem
echo "wrote $D: ca.pem server.pem server.key client.pem client.key"
