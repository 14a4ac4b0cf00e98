#!/bin/sh
# Set up a Vault (or OpenBao) PKI engine for meshca: a mount with a root CA,
# the role meshca signs with, and a policy that allows exactly what meshca
# does. Run with an admin token:
#
#   export VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=...   # or BAO_ADDR / BAO_TOKEN
#   ./setup-pki.sh
#
# Variables: VAULT (CLI, default `vault`; `bao` works the same), MOUNT
# (pki), ROLE (openservicemesh), TRUST_DOMAIN (cluster.local), MAX_TTL (72h),
# NOT_BEFORE_DURATION (30s, Vault's default: how far leaves' NotBefore is
# backdated; meshca reads it from the role and asks for that much less, so a
# leaf's whole validity is the lifetime asked for), POST_QUANTUM_ROLE (unset:
# none; set, e.g. to meshca-ml-dsa, an ML-DSA-65 root is made beside the
# first, with a role of that name signing under it, for meshca's
# provider.vault.post_quantum.role; OpenBao 2.7 and later).
set -eu
VAULT=${VAULT:-vault}
MOUNT=${MOUNT:-pki}
ROLE=${ROLE:-openservicemesh}
TRUST_DOMAIN=${TRUST_DOMAIN:-cluster.local}
MAX_TTL=${MAX_TTL:-72h}
NOT_BEFORE_DURATION=${NOT_BEFORE_DURATION:-30s}

"$VAULT" secrets enable -path="$MOUNT" pki
"$VAULT" secrets tune -max-lease-ttl=87600h "$MOUNT"
"$VAULT" write -field=issuer_id "$MOUNT/root/generate/internal" \
  common_name="meshca Vault root" issuer_name=root-1 key_type=ec key_bits=256 ttl=87600h >/dev/null

# Leaves carry SA.NS.TD plus spiffe://TD/ns/NS/sa/SA; names come from meshca,
# never from the CSR. localhost and IP SANs are for meshca's own serving
# certificate (server_names in meshca's config).
role() { # NAME ISSUER KEY_USAGE
  "$VAULT" write "$MOUNT/roles/$1" issuer_ref="$2" \
    allowed_domains="$TRUST_DOMAIN" allow_subdomains=true allow_bare_domains=false \
    allow_localhost=true allow_ip_sans=true \
    allowed_uri_sans="spiffe://$TRUST_DOMAIN/*" \
    use_csr_common_name=false use_csr_sans=false \
    server_flag=true client_flag=true key_usage="$3" \
    basic_constraints_valid_for_non_ca=true \
    key_type=any \
    not_before_duration="$NOT_BEFORE_DURATION" \
    max_ttl="$MAX_TTL" >/dev/null
}
role "$ROLE" default DigitalSignature,KeyEncipherment

PQ_POLICY=
if [ -n "${POST_QUANTUM_ROLE:-}" ]; then
  "$VAULT" write -field=issuer_id "$MOUNT/root/generate/internal" \
    common_name="meshca Vault post-quantum root" issuer_name=pq-root-1 \
    key_type=mldsa key_bits=65 ttl=87600h >/dev/null
  role "$POST_QUANTUM_ROLE" pq-root-1 DigitalSignature
  PQ_POLICY="path \"$MOUNT/sign/$POST_QUANTUM_ROLE\" { capabilities = [\"create\", \"update\"] }"
fi

"$VAULT" policy write meshca - <<POLICY
$PQ_POLICY
path "$MOUNT/sign/$ROLE" { capabilities = ["create", "update"] }
path "$MOUNT/roles/$ROLE" { capabilities = ["read"] }
path "$MOUNT/issuers"    { capabilities = ["list"] }
path "$MOUNT/issuer/*"   { capabilities = ["read"] }
path "$MOUNT/ca_chain"   { capabilities = ["read"] }
path "$MOUNT/revoke"     { capabilities = ["create", "update"] }
path "$MOUNT/crl"        { capabilities = ["read"] }
POLICY
