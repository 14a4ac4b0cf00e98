use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use meshca_provider::{Identity, TrustDomain};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use super::AuthError;

/// Prefix of every token, so a leaked one is recognisable in logs and by
/// secret scanners.
const TOKEN_PREFIX: &str = "meshca_";

/// One token as stored: only the SHA-256 of the token and the identity it
/// authenticates.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Lower-case hex SHA-256 of the token text.
    pub sha256: String,
    /// The namespace of the identity.
    pub namespace: String,
    /// The service account of the identity.
    pub service_account: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

impl TokenRecord {
    /// A short name for the token, safe to show: the start of its hash,
    /// from which the token cannot be recovered.
    pub fn id(&self) -> &str {
        self.sha256.get(..12).unwrap_or(&self.sha256)
    }
}

/// Which tokens `meshca token revoke` removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoke {
    /// The one with this id ([`TokenRecord::id`]).
    Id(String),
    /// Every token of this identity.
    Identity {
        /// Its namespace.
        namespace: String,
        /// Its service account.
        service_account: String,
    },
}

impl Revoke {
    fn matches(&self, r: &TokenRecord) -> bool {
        match self {
            Self::Id(id) => r.id() == id,
            Self::Identity {
                namespace,
                service_account,
            } => &r.namespace == namespace && &r.service_account == service_account,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<TokenRecord>,
}

/// How long a successful look at the file's metadata is trusted, so that a
/// burst of requests costs one `stat`, not one each.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Cache {
    /// Modification time and length of the file the map was read from.
    stamp: Option<(SystemTime, u64)>,
    /// When the stamp was last compared with the file.
    checked_at: Option<Instant>,
    by_hash: HashMap<String, TokenRecord>,
}

/// Static bearer tokens, each bound to one identity.
///
/// The file holds hashes only, so reading it does not reveal a token. The
/// daemon re-reads it when it changes, so `meshca token create` takes effect
/// without a restart.
#[derive(Clone, Debug)]
pub struct TokenStore {
    path: PathBuf,
    cache: Arc<RwLock<Cache>>,
}

fn sha256_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenStore {
    /// A store backed by `path`; a missing file is an empty store.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Arc::default(),
        }
    }

    /// Whether `token` has the form of a token this store issues.
    pub fn is_static(token: &str) -> bool {
        token.starts_with(TOKEN_PREFIX)
    }

    /// The file behind the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity `token` authenticates.
    ///
    /// # Errors
    /// [`AuthError::UnknownToken`], or [`AuthError::Store`] when the file
    /// exists but cannot be read.
    pub fn lookup(&self, token: &str, trust_domain: &TrustDomain) -> Result<Identity, AuthError> {
        let hash = sha256_hex(token);
        self.refresh(false)?;
        let record = match self.find(&hash)? {
            Some(r) => r,
            // A token created a moment ago may not be in the cache yet.
            None => {
                self.refresh(true)?;
                self.find(&hash)?.ok_or(AuthError::UnknownToken)?
            }
        };
        Identity::new(
            trust_domain.clone(),
            &record.namespace,
            &record.service_account,
        )
        .map_err(|e| AuthError::Store(e.to_string()))
    }

    fn find(&self, hash: &str) -> Result<Option<TokenRecord>, AuthError> {
        let cache = self
            .cache
            .read()
            .map_err(|_| AuthError::Store("token cache poisoned".into()))?;
        Ok(cache.by_hash.get(hash).cloned())
    }

    /// Re-read the file if it changed; unless `force`, trust a recent
    /// look at its metadata.
    fn refresh(&self, force: bool) -> Result<(), AuthError> {
        if !force
            && self.cache.read().is_ok_and(|c| {
                c.stamp.is_some() && c.checked_at.is_some_and(|t| t.elapsed() < RECHECK_AFTER)
            })
        {
            return Ok(());
        }
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(AuthError::Store(format!("{}: {e}", self.path.display()))),
        };
        if self
            .cache
            .read()
            .is_ok_and(|c| c.stamp == stamp && stamp.is_some())
        {
            return Ok(());
        }
        let file = read_file(&self.path)?;
        let mut cache = self
            .cache
            .write()
            .map_err(|_| AuthError::Store("token cache poisoned".into()))?;
        cache.by_hash = file
            .tokens
            .into_iter()
            .map(|r| (r.sha256.clone(), r))
            .collect();
        cache.stamp = stamp;
        cache.checked_at = Some(Instant::now());
        tracing::debug!(path = %self.path.display(), tokens = cache.by_hash.len(), "loaded the token store");
        Ok(())
    }

    /// Create a token for `identity`, store its hash, and return the token:
    /// the only time its text exists outside the caller.
    ///
    /// # Errors
    /// [`AuthError::Store`] when the file cannot be read or written.
    pub fn create(&self, identity: &Identity) -> Result<String, AuthError> {
        let mut raw = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| AuthError::Store("the system random source failed".into()))?;
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let record = TokenRecord {
            sha256: sha256_hex(&token),
            namespace: identity.namespace().to_owned(),
            service_account: identity.service_account().to_owned(),
            created_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        };
        self.update(|file| file.tokens.push(record))?;
        Ok(token)
    }

    /// Every stored token's record (hashes, never tokens).
    ///
    /// # Errors
    /// [`AuthError::Store`] when the file cannot be read.
    pub fn list(&self) -> Result<Vec<TokenRecord>, AuthError> {
        Ok(read_file(&self.path)?.tokens)
    }

    /// Remove the tokens `which` names; returns how many. A running daemon
    /// refuses them once it sees the file change (within seconds).
    ///
    /// # Errors
    /// [`AuthError::Store`] when the file cannot be read or written.
    pub fn revoke(&self, which: &Revoke) -> Result<usize, AuthError> {
        self.update(|file| {
            let before = file.tokens.len();
            file.tokens.retain(|r| !which.matches(r));
            before - file.tokens.len()
        })
    }

    /// Change the file under a lock (concurrent `meshca token` runs) and
    /// replace it atomically (0600).
    fn update<T>(&self, change: impl FnOnce(&mut TokenFile) -> T) -> Result<T, AuthError> {
        let store_err =
            |e: std::io::Error| AuthError::Store(format!("{}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(store_err)?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .map_err(store_err)?;
        lock.lock().map_err(store_err)?;
        let mut file = read_file(&self.path)?;
        let result = change(&mut file);
        let yaml = serde_yaml_ng::to_string(&file)
            .map_err(|e| AuthError::Store(format!("failed to encode the token store: {e}")))?;
        let text = format!(
            "# meshca bearer tokens: SHA-256 hashes only. Managed by `meshca token`.\n{yaml}"
        );
        crate::bundle::write_atomically(&self.path, text.as_bytes(), 0o600).map_err(store_err)?;
        Ok(result)
    }
}

fn read_file(path: &Path) -> Result<TokenFile, AuthError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_yaml_ng::from_str::<Option<TokenFile>>(&text)
            .map(Option::unwrap_or_default)
            .map_err(|e| AuthError::Store(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(e) => Err(AuthError::Store(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_authenticates_its_identity_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("cluster.local").expect("td");
        let store = TokenStore::new(dir.path().join("tokens.yaml"));
        let id = Identity::new(td.clone(), "bookstore", "bookstore").expect("id");
        let token = store.create(&id).expect("create");
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(store.lookup(&token, &td).expect("known"), id);

        let text = std::fs::read_to_string(store.path()).expect("read");
        assert!(!text.contains(&token[TOKEN_PREFIX.len()..]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        assert!(matches!(
            store.lookup("meshca_nope", &td),
            Err(AuthError::UnknownToken)
        ));
    }

    #[test]
    fn tokens_created_later_are_seen_without_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("cluster.local").expect("td");
        let daemon_view = TokenStore::new(dir.path().join("tokens.yaml"));
        assert!(daemon_view.lookup("x", &td).is_err());
        let cli_view = TokenStore::new(dir.path().join("tokens.yaml"));
        let id = Identity::new(td.clone(), "a", "b").expect("id");
        let t1 = cli_view.create(&id).expect("create");
        let t2 = cli_view.create(&id).expect("create");
        assert_eq!(daemon_view.lookup(&t1, &td).expect("t1"), id);
        assert_eq!(daemon_view.lookup(&t2, &td).expect("t2"), id);
    }

    #[test]
    fn a_corrupt_store_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("cluster.local").expect("td");
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "tokens: [ {bad").expect("write");
        assert!(matches!(
            TokenStore::new(path).lookup("x", &td),
            Err(AuthError::Store(_))
        ));
    }
}
