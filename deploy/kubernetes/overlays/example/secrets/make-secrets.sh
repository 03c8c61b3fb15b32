#!/bin/sh
# Make this overlay's secrets (kept out of version control by .gitignore):
#   issuer.pem          the token issuer's ES256 private key (Secret casa-issuer-key)
#   issuer.pub.pem      its public half (ConfigMap casa-issuer-public)
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
if [ ! -s oidc-client-secret ]; then
    echo "put the client secret your OpenID Connect provider gave you in $(pwd)/oidc-client-secret" >&2
    exit 1
fi
