//! Revocation as a backend sees it: which serials are revoked, and the
//! certificate revocation lists (CRLs) that say so, signed by whoever
//! signed the certificates.
//!
//! meshca keeps the list of revoked serials itself (the daemon's
//! revocation ledger) and asks the backend for CRLs over it: a backend
//! that signs in-process signs one CRL per CA it issues under, and a CA
//! that cannot revoke says why ([`Revocation::Cannot`]).

use rustls_pki_types::CertificateRevocationListDer;
use time::OffsetDateTime;

/// Whether a backend can revoke what it issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// It signs CRLs over the serials meshca revoked.
    SignsCrls,
    /// It cannot: why, and what would change it, for the refusal.
    Cannot(&'static str),
}

/// A serial number: the big-endian magnitude of a positive integer, no
/// leading zero bytes, at most 20 bytes (RFC 5280 §4.1.2.2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

/// Why a text is not a serial number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a certificate serial number: {why} (write it in hexadecimal, as `openssl x509 -serial` prints it; colons allowed)")]
pub struct SerialError {
    text: String,
    why: &'static str,
}

impl Serial {
    /// The serial written in hexadecimal, upper or lower case, with or
    /// without colons between bytes (`openssl x509 -serial`, meshca's
    /// `serial` fields).
    ///
    /// # Errors
    /// [`SerialError`]: not hexadecimal, zero, or longer than 20 bytes.
    pub fn parse(text: &str) -> Result<Self, SerialError> {
        let error = |why| SerialError {
            text: text.to_owned(),
            why,
        };
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        if digits.is_empty() {
            return Err(error("it is empty"));
        }
        if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(error("it has a character that is not a hexadecimal digit"));
        }
        let significant = digits.trim_start_matches('0');
        if significant.is_empty() {
            return Err(error("a serial number is positive"));
        }
        let padded = match significant.len() % 2 {
            0 => significant.to_ascii_lowercase(),
            _ => format!("0{}", significant.to_ascii_lowercase()),
        };
        let bytes = base16ct::lower::decode_vec(padded.as_bytes())
            .map_err(|_| error("it is not hexadecimal"))?;
        if bytes.len() > 20 {
            return Err(error("it is longer than 20 bytes"));
        }
        Ok(Self(bytes))
    }

    /// The serial of a certificate, as its DER encodes it (a leading zero
    /// byte for a positive integer whose top bit is set is dropped).
    pub fn from_der_integer(raw: &[u8]) -> Self {
        let skip = raw.iter().take_while(|b| **b == 0).count();
        Self(raw[skip..].to_vec())
    }

    /// The magnitude, big-endian.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for Serial {
    /// Lower-case hexadecimal without colons, as [`crate::Issued::serial`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&base16ct::lower::encode_string(&self.0))
    }
}

/// One revoked certificate, as a CRL lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number.
    pub serial: Serial,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

/// What the CRLs asked for say: the revoked serials, and when the lists
/// were made and will next be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlRequest {
    /// Every serial revoked and not yet expired.
    pub revoked: Vec<Revoked>,
    /// `thisUpdate`; also the CRL number, in milliseconds since the Unix
    /// epoch, so that a later list always has a greater number without a
    /// counter to keep.
    pub this_update: OffsetDateTime,
    /// `nextUpdate`.
    pub next_update: OffsetDateTime,
}

impl CrlRequest {
    /// The CRL number for these lists (RFC 5280 §5.2.3: monotonically
    /// increasing per issuer).
    pub fn number(&self) -> u64 {
        u64::try_from(self.this_update.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
    }
}

/// One CRL a backend signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCrl {
    /// The issuing CA's subject, for metrics and logs.
    pub issuer: String,
    /// Whether leaves are checked against it (the CA signing leaves now),
    /// as opposed to a CA above it or one that no longer signs.
    pub signs_leaves: bool,
    /// The CRL.
    pub der: CertificateRevocationListDer<'static>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_read_as_openssl_and_meshca_write_them() {
        let one = Serial::parse("0A:1b:FF").expect("as written");
        assert_eq!(one.as_bytes(), [0x0a, 0x1b, 0xff]);
        assert_eq!(one.to_string(), "0a1bff");
        assert_eq!(Serial::parse("a1bff").expect("as written"), one);
        assert_eq!(Serial::parse("000a1bff").expect("as written"), one);
        assert_eq!(Serial::from_der_integer(&[0, 0x0a, 0x1b, 0xff]), one);
        assert_eq!(
            Serial::parse(&"7f".repeat(20))
                .expect("as written")
                .as_bytes()
                .len(),
            20
        );
    }

    #[test]
    fn what_is_not_a_serial_is_refused_saying_why() {
        for (text, why) in [
            ("", "empty"),
            ("::", "empty"),
            ("00", "positive"),
            ("12g4", "not a hexadecimal digit"),
            ("-1", "not a hexadecimal digit"),
            (&"ab".repeat(21), "longer than 20 bytes"),
        ] {
            let e = Serial::parse(text).expect_err("refused").to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_crl_number_grows_with_this_update() {
        let at = |s| CrlRequest {
            revoked: Vec::new(),
            this_update: OffsetDateTime::from_unix_timestamp(s).expect("as written"),
            next_update: OffsetDateTime::from_unix_timestamp(s + 600).expect("as written"),
        };
        assert_eq!(at(1_700_000_000).number(), 1_700_000_000_000);
        assert!(at(1_700_000_001).number() > at(1_700_000_000).number());
    }
}
