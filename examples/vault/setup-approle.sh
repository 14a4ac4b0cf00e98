#!/bin/sh
# AppRole login for meshca. Prints the role_id (for meshca's config) and
# writes a secret_id to $SECRET_ID_FILE (default ./secret-id, mode 0600).
# TOKEN_TTL / TOKEN_MAX_TTL bound the tokens meshca gets (it renews them and
# logs in again when renewal is refused).
set -eu
VAULT=${VAULT:-vault}
SECRET_ID_FILE=${SECRET_ID_FILE:-./secret-id}
"$VAULT" auth enable approle >&2
"$VAULT" write auth/approle/role/meshca token_policies=meshca \
  token_ttl="${TOKEN_TTL:-1h}" token_max_ttl="${TOKEN_MAX_TTL:-24h}" >&2
umask 077
"$VAULT" write -f -field=secret_id auth/approle/role/meshca/secret-id > "$SECRET_ID_FILE"
"$VAULT" read -field=role_id auth/approle/role/meshca/role-id
