#!/usr/bin/env bash
# Make a throw-away certificate authority, a SuperLink TLS certificate signed by it and,
# optionally, SuperNode authentication keys. FOR LOCAL TESTS ONLY (loopback, a lab
# network): the CA key sits unencrypted next to the certificates. For a real fleet use
# your organisation's CA and keep private keys on the machines that use them.
#
#   deploy/certificates/generate.sh [OUT_DIR] [SAN ...]
#
# OUT_DIR  default: deploy/certificates/out
# SAN      extra names the SuperLink is reached by, e.g. IP:192.168.1.10 DNS:superlink.lan
#          (localhost, 127.0.0.1 and ::1 are always included)
# SUPERNODE_KEYS=N (environment) also writes supernode-<k> / supernode-<k>.pub for
#          k = 0..N-1: EC P-384 key pairs in OpenSSH format for SuperNode authentication.
#
# Output: ca.crt (give to every SuperNode and to `fedsim deploy run`:
# --root-certificates), server.pem + server.key + ca.crt (the SuperLink:
# `fedsim deploy superlink --certificates OUT_DIR`), ca.key (keep or delete).
set -euo pipefail

out=${1:-"$(dirname "$0")/out"}
[ $# -gt 0 ] && shift
sans="DNS:localhost,IP:127.0.0.1,IP:::1"
for san in "$@"; do sans="$sans,$san"; done

mkdir -p "$out"
cd "$out"
openssl genrsa -out ca.key 3072 2>/dev/null
openssl req -new -x509 -key ca.key -sha256 -days 30 -subj "/O=fedsim local test CA" -out ca.crt
openssl genrsa -out server.key 3072 2>/dev/null
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$sans" \
    >server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl

for ((k = 0; k < ${SUPERNODE_KEYS:-0}; k++)); do
    rm -f "supernode-$k" "supernode-$k.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedsim-supernode-$k" -f "supernode-$k"
done
echo "wrote $(ls | tr '\n' ' ')to $PWD (SANs: $sans)"
