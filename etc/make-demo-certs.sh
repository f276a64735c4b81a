#!/bin/sh
# Demo certificates for etc/tls_termination.yaml and etc/tls_sni.yaml, written to
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

# Two more server certificates for etc/tls_sni.yaml (chains picked by SNI).
for pair in alpha:DNS:alpha.demo beta:DNS:*.beta.demo; do
  name=${pair%%:*}
  san=${pair#*:}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/O=pyenvoy demo/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
done

rm -f server.csr client.csr server.ext client.ext ca.srl
chmod 644 ca.pem server.pem client.pem alpha.pem beta.pem
echo "wrote $D: ca.pem server.pem server.key client.pem client.key alpha.* beta.*"
