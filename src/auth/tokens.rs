use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use meshca_provider::{Identity, TrustDomain};
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::watched::{read_yaml, update_yaml, FileError, WatchedFile};

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

/// The token file as the daemon reads it: records by hash, so a lookup
/// costs the same with ten tokens or ten thousand.
#[derive(Debug, Default, Deserialize)]
#[serde(from = "TokenFile")]
struct TokenIndex(HashMap<String, TokenRecord>);

impl From<TokenFile> for TokenIndex {
    fn from(file: TokenFile) -> Self {
        Self(
            file.tokens
                .into_iter()
                .map(|r| (r.sha256.clone(), r))
                .collect(),
        )
    }
}

/// Static bearer tokens, each bound to one identity.
///
/// The file holds hashes only, so reading it does not reveal a token. The
/// daemon re-reads it when it changes, so `meshca token create` and
/// `meshca token revoke` take effect without a restart.
#[derive(Clone, Debug)]
pub struct TokenStore {
    file: Arc<WatchedFile<TokenIndex>>,
}

fn sha256_hex(token: &str) -> String {
    base16ct::lower::encode_string(&crate::crypto::sha256(token.as_bytes()))
}

impl TokenStore {
    /// A store backed by `path`, read on the blocking pool: for the
    /// daemon.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed: the daemon does not
    /// start on a token store it cannot read.
    pub async fn open(path: PathBuf) -> Result<Self, Arc<FileError>> {
        Ok(Self {
            file: Arc::new(WatchedFile::open(path).await?),
        })
    }

    /// A store backed by `path`; a missing file is an empty store.
    pub fn new(path: PathBuf) -> Self {
        Self {
            file: Arc::new(WatchedFile::new(path)),
        }
    }

    /// Whether `token` has the form of a token this store issues.
    pub fn is_static(token: &str) -> bool {
        token.starts_with(TOKEN_PREFIX)
    }

    /// The file behind the store.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The task that keeps the daemon's view of the file current until
    /// `shutdown` (see [`WatchedFile::follow`]).
    pub(crate) fn follow(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.file.clone().follow(shutdown)
    }

    /// The identity `token` authenticates.
    ///
    /// # Errors
    /// [`AuthError::UnknownToken`], or [`AuthError::Store`] when the file
    /// exists but cannot be read.
    pub async fn lookup(
        &self,
        token: &str,
        trust_domain: &TrustDomain,
    ) -> Result<Identity, AuthError> {
        let hash = sha256_hex(token);
        let find = || -> Result<Option<TokenRecord>, AuthError> {
            let file = self
                .file
                .get()
                .map_err(|e| AuthError::Store(crate::report::error_chain(&*e)))?;
            Ok(file.0.get(&hash).cloned())
        };
        // A token created a moment ago may not be in the snapshot yet: one
        // look at the file (a stat; a read only if it changed), on the
        // blocking pool, even while the follower looks (it may have stat'ed
        // just before the change).
        let record = match find()? {
            Some(r) => r,
            None => {
                let file = self.file.clone();
                let _ = tokio::task::spawn_blocking(move || file.reread()).await;
                find()?.ok_or(AuthError::UnknownToken)?
            }
        };
        Identity::new(
            trust_domain.clone(),
            &record.namespace,
            &record.service_account,
        )
        .map_err(|e| AuthError::Store(e.to_string()))
    }

    /// Create a token for `identity`, store its hash, and return the token:
    /// the only time its text exists outside the caller.
    ///
    /// # Errors
    /// [`AuthError::Store`] when the file cannot be read or written.
    pub fn create(&self, identity: &Identity) -> Result<String, AuthError> {
        let mut tokens = self.create_all(std::slice::from_ref(identity))?;
        tokens
            .pop()
            .ok_or_else(|| AuthError::Store("no token was created".into()))
    }

    /// [`TokenStore::create`] for many identities in one change of the
    /// file (provisioning a fleet rewrites it once, not once per token);
    /// the tokens come back in the order of `identities`.
    ///
    /// # Errors
    /// [`AuthError::Store`] when the file cannot be read or written; then
    /// no token was stored.
    pub fn create_all(&self, identities: &[Identity]) -> Result<Vec<String>, AuthError> {
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut tokens = Vec::with_capacity(identities.len());
        let mut records = Vec::with_capacity(identities.len());
        for identity in identities {
            let raw = crate::crypto::random::<32>().map_err(|e| AuthError::Store(e.to_string()))?;
            let token = format!(
                "{TOKEN_PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
            );
            records.push(TokenRecord {
                sha256: sha256_hex(&token),
                namespace: identity.namespace().to_owned(),
                service_account: identity.service_account().to_owned(),
                created_at: created_at.clone(),
            });
            tokens.push(token);
        }
        self.update(|file| file.tokens.extend(records))?;
        Ok(tokens)
    }

    /// Every stored token's record (hashes, never tokens).
    ///
    /// # Errors
    /// [`AuthError::Store`] when the file cannot be read.
    pub fn list(&self) -> Result<Vec<TokenRecord>, AuthError> {
        Ok(read_yaml::<TokenFile>(self.path())
            .map_err(|e| AuthError::Store(crate::report::error_chain(&e)))?
            .tokens)
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

    fn update<T>(&self, change: impl FnOnce(&mut TokenFile) -> T) -> Result<T, AuthError> {
        update_yaml(
            self.path(),
            "meshca bearer tokens: SHA-256 hashes only. Managed by `meshca token`.",
            change,
        )
        .map_err(|e| AuthError::Store(crate::report::error_chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_created_token_authenticates_its_identity_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("cluster.local").expect("td");
        let store = TokenStore::new(dir.path().join("tokens.yaml"));
        let id = Identity::new(td.clone(), "bookstore", "bookstore").expect("id");
        let token = store.create(&id).expect("create");
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(store.lookup(&token, &td).await.expect("known"), id);

        let text = std::fs::read_to_string(store.path()).expect("read");
        assert!(!text.contains(&token[TOKEN_PREFIX.len()..]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        assert!(matches!(
            store.lookup("meshca_nope", &td).await,
            Err(AuthError::UnknownToken)
        ));
    }

    #[tokio::test]
    async fn tokens_created_later_are_seen_without_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("cluster.local").expect("td");
        let daemon_view = TokenStore::new(dir.path().join("tokens.yaml"));
        assert!(daemon_view.lookup("x", &td).await.is_err());
        let cli_view = TokenStore::new(dir.path().join("tokens.yaml"));
        let id = Identity::new(td.clone(), "a", "b").expect("id");
        let t1 = cli_view.create(&id).expect("create");
        let t2 = cli_view.create(&id).expect("create");
        assert_eq!(daemon_view.lookup(&t1, &td).await.expect("t1"), id);
        assert_eq!(daemon_view.lookup(&t2, &td).await.expect("t2"), id);
    }

    #[tokio::test]
    async fn many_tokens_in_one_change_each_authenticate_their_own_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("cluster.local").expect("td");
        let store = TokenStore::new(dir.path().join("tokens.yaml"));
        let first = Identity::new(td.clone(), "a", "first").expect("id");
        let earlier = store.create(&first).expect("create");
        let fleet: Vec<Identity> = (0..300)
            .map(|i| Identity::new(td.clone(), "fleet", &format!("sa-{i}")).expect("id"))
            .collect();
        let tokens = store.create_all(&fleet).expect("create_all");
        assert_eq!(tokens.len(), fleet.len());
        for (token, identity) in tokens.iter().zip(&fleet) {
            assert_eq!(&store.lookup(token, &td).await.expect("known"), identity);
        }
        assert_eq!(store.lookup(&earlier, &td).await.expect("kept"), first);
        assert_eq!(store.list().expect("list").len(), 301);
    }

    #[tokio::test]
    async fn a_corrupt_store_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("cluster.local").expect("td");
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "tokens: [ {bad").expect("write");
        assert!(matches!(
            TokenStore::new(path).lookup("x", &td).await,
            Err(AuthError::Store(_))
        ));
    }
}
