#!/bin/sh
# Make this overlay's secrets (kept out of version control by .gitignore):
#   issuer.pem          the token issuer's ES256 private key (Secret casa-issuer-key)
#   issuer.pub.pem      its public half (ConfigMap casa-issuer-public)
#   xrootd-ca.crt, xrootd.crt, xrootd.key
#                       a CA of the facility's (its key xrootd-ca.key stays here) and the
#                       origin's and the cache's certificate (Secret casa-xrootd-tls); a site
#                       whose CA issues host certificates puts its own files here instead
#   oidc-client-secret  the hub's OpenID Connect client secret (Secret casa-hub-oidc):
#                       from your provider; this script only checks that it is there
# An existing issuer.pem is kept: a new key invalidates every token already issued.
set -eu
cd "$(dirname "$0")"
umask 077
if [ ! -e issuer.pem ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out issuer.pem
    echo "made issuer.pem"
fi
openssl pkey -in issuer.pem -pubout -out issuer.pub.pem
chmod 0644 issuer.pub.pem
# SITE: the name clients use for the cache (facility.host in casa.toml).
PUBLIC_NAME=casa.physics.example.edu
if [ ! -e xrootd-ca.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/O=casa/CN=casa XRootD CA" -keyout xrootd-ca.key -out xrootd-ca.crt
    echo "made xrootd-ca.key and xrootd-ca.crt"
fi
if [ ! -e xrootd.key ]; then
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$PUBLIC_NAME" \
        -keyout xrootd.key -out xrootd.csr
    printf 'subjectAltName=DNS:%s,DNS:casa-origin,DNS:casa-cache,DNS:localhost\n' "$PUBLIC_NAME" \
        > xrootd.ext
    openssl x509 -req -in xrootd.csr -CA xrootd-ca.crt -CAkey xrootd-ca.key -CAcreateserial \
        -days 365 -extfile xrootd.ext -out xrootd.crt
    rm -f xrootd.csr xrootd.ext
    echo "made xrootd.key and xrootd.crt"
fi
if [ ! -s oidc-client-secret ]; then
    echo "put the client secret your OpenID Connect provider gave you in $(pwd)/oidc-client-secret" >&2
    exit 1
fi
