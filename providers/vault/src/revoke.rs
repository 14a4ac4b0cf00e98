//! Revocation through the PKI engine: Vault keeps what it revoked and
//! signs the mount's CRL. meshca revokes each serial of its ledger once
//! (`<mount>/revoke`) and serves the CRL of the mount's default issuer
//! (`<mount>/crl`, DER), which Vault rebuilds on every revocation.
//!
//! A serial the mount never issued (one Tresor signed before a switch, a
//! role with `no_store`) is refused by Vault with "not found"; it is left
//! out once, logged, and never asked again: repeating cannot change the
//! answer.

use std::collections::BTreeSet;
use std::sync::Mutex;

use meshca_provider::revocation::{CrlRequest, Serial, SignedCrl};
use reqwest::Method;
use rustls_pki_types::CertificateRevocationListDer;
use serde_json::json;

use crate::client::Client;
use crate::VaultError;

/// What meshca revoked at one mount, and the last lists it served.
#[derive(Default)]
pub(crate) struct Revocations {
    /// Serials Vault revoked, or refused as not its own.
    asked: Mutex<BTreeSet<Serial>>,
    last: Mutex<Option<(CrlRequest, Vec<SignedCrl>)>>,
}

/// Vault's spelling of a serial: hexadecimal bytes separated by colons.
fn vault_serial(serial: &Serial) -> String {
    serial
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Revocations {
    /// Revoke what `request` lists that Vault was not asked to yet, then
    /// read the mount's CRL; the last lists again for the same request.
    ///
    /// # Errors
    /// [`VaultError`]: Vault could not be asked, or refused otherwise than
    /// "not found" (the next request tries again).
    pub(crate) async fn lists(
        &self,
        client: &Client,
        mount: &str,
        request: &CrlRequest,
    ) -> Result<Vec<SignedCrl>, VaultError> {
        if let Some((asked, lists)) = &*self.last.lock().unwrap_or_else(|e| e.into_inner()) {
            if asked == request {
                return Ok(lists.clone());
            }
        }
        for revoked in &request.revoked {
            if self.was_asked(&revoked.serial) {
                continue;
            }
            self.revoke(client, mount, &revoked.serial).await?;
        }
        let der = client
            .call(Method::GET, &format!("{mount}/crl"), None)
            .await?;
        let (_, crl) = x509_parser::parse_x509_crl(&der)
            .map_err(|e| VaultError::Protocol(format!("{mount}/crl is not a DER CRL: {e}")))?;
        let lists = vec![SignedCrl {
            issuer: crl.issuer().to_string(),
            signs_leaves: true,
            der: CertificateRevocationListDer::from(der.clone()),
        }];
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((request.clone(), lists.clone()));
        Ok(lists)
    }

    fn was_asked(&self, serial: &Serial) -> bool {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial)
    }

    async fn revoke(
        &self,
        client: &Client,
        mount: &str,
        serial: &Serial,
    ) -> Result<(), VaultError> {
        let body = json!({ "serial_number": vault_serial(serial) });
        match client
            .call(Method::POST, &format!("{mount}/revoke"), Some(&body))
            .await
        {
            Ok(_) => tracing::info!(%serial, mount, "Vault revoked the certificate"),
            Err(VaultError::Rejected(text)) if text.contains("not found") => {
                tracing::warn!(%serial, mount, "Vault holds no certificate of this serial (another signer's, or a role with no_store); its CRL cannot list it");
            }
            Err(e) => return Err(e),
        }
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(serial.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_spelled_as_vault_stores_them() {
        let serial = Serial::parse("0a1bff").expect("serial");
        assert_eq!(vault_serial(&serial), "0a:1b:ff");
    }
}
