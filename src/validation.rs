//! Problems found while validating configuration, each named by the path
//! of its key, so that every problem in a file is reported at once.

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
