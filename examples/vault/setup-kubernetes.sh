#!/bin/sh
# Kubernetes auth for meshca: Vault checks meshca's ServiceAccount token with
# a TokenReview against KUBERNETES_HOST, and maps ServiceAccount
# osm-system/meshca to the meshca policy. REVIEWER_JWT is a token allowed to
# create TokenReviews (meshca's own works: its chart grants it).
# KUBERNETES_CA_CERT (PEM text) verifies an https:// KUBERNETES_HOST.
set -eu
VAULT=${VAULT:-vault}
"$VAULT" auth enable kubernetes >&2
if [ -n "${KUBERNETES_CA_CERT:-}" ]; then
  "$VAULT" write auth/kubernetes/config kubernetes_host="$KUBERNETES_HOST" \
    kubernetes_ca_cert="$KUBERNETES_CA_CERT" token_reviewer_jwt="$REVIEWER_JWT" >&2
else
  "$VAULT" write auth/kubernetes/config kubernetes_host="$KUBERNETES_HOST" \
    token_reviewer_jwt="$REVIEWER_JWT" >&2
fi
"$VAULT" write auth/kubernetes/role/meshca \
  bound_service_account_names="${SERVICE_ACCOUNT:-meshca}" \
  bound_service_account_namespaces="${NAMESPACE:-osm-system}" \
  token_policies=meshca token_ttl=1h >&2
