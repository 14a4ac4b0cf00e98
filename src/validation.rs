//! Problems found while validating configuration, each named by the path
//! of its key, so that every problem in a file is reported at once.

use meshca_provider::ServerName;

/// The problems found so far.
#[derive(Debug, Default)]
pub struct Errors(Vec<String>);

impl Errors {
    /// Record that the key at `path` is wrong.
    pub fn add(&mut self, path: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{path}: {message}"));
    }

    /// How many problems were recorded (to tell whether a section added
    /// any).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order found.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// Whether `value` is a lower-case RFC 1123 DNS name, as Kubernetes
/// namespaces and object names must be.
pub fn is_dns_name(value: &str) -> bool {
    meshca_provider::TrustDomain::new(value).is_ok()
}

/// A Kubernetes namespace name: an RFC 1123 label of at most 63
/// characters.
pub fn is_dns_label(label: &str) -> bool {
    is_dns_label_of(label, 63)
}

/// A DNS-1123 label of at most `max` characters: lower-case letters,
/// digits and '-', starting and ending with a letter or digit.
pub fn is_dns_label_of(label: &str, max: usize) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Names a certificate of meshca's is dialled by, as written under `key`.
pub fn server_names(key: &str, names: &[String], errors: &mut Errors) -> Vec<ServerName> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let parsed = ServerName::parse(name);
            if let ServerName::Dns(d) = &parsed {
                if !is_dns_name(d) && !d.starts_with("*.") {
                    errors.add(
                        &format!("{key}[{i}]"),
                        format!("{name:?} is neither an IP address nor a lower-case DNS name"),
                    );
                }
            }
            parsed
        })
        .collect()
}
