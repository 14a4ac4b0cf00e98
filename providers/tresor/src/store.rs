// Blocking file I/O by contract: meshca calls these on the blocking pool.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshca_provider::crypto::custody::CustodyAlgorithm;

use crate::{CaCertificate, RootKeyAlgorithm, TresorError};

const CERT_FILE: &str = "root.crt";
const KEY_FILE: &str = "root.key";

/// Where Tresor's root comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootSource {
    /// Generated on first start and persisted in `dir` (`root.crt`, and
    /// `root.key` with mode 0600); every later start loads it again.
    Generated {
        /// The directory holding the root; created if missing.
        dir: PathBuf,
        /// Key algorithm for a new root.
        algorithm: RootKeyAlgorithm,
        /// Lifetime of a new root.
        validity: Duration,
        /// Subject CN of a new root.
        common_name: String,
        /// Which of the roots made in turn this is (0 for the first): a
        /// rotation makes the next beside it, in its own `dir`, and a
        /// daemon in a cluster keeps it apart in the same way.
        generation: u32,
    },
    /// Brought by the operator: a PEM certificate and a PEM key (PKCS#8,
    /// PKCS#1 or SEC1).
    Files {
        /// The CA certificate.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// Generated on first start with a key a custodian (an HSM, a KMS)
    /// makes and keeps; only the certificate is persisted, in `dir`
    /// (without a cluster) or in the cluster. The daemon builds it with
    /// its custodian ([`crate::CaCertificate::generate_root_in`],
    /// [`load_custody_root`]).
    InCustody {
        /// The directory holding the certificate (without a cluster).
        dir: PathBuf,
        /// The key's name in custody.
        key_name: String,
        /// Its algorithm.
        algorithm: CustodyAlgorithm,
        /// Lifetime of a new root.
        validity: Duration,
        /// Subject CN of a new root.
        common_name: String,
    },
}

/// A root as loaded, and whether this start created it.
#[derive(Debug)]
pub struct StoredRoot {
    /// The CA.
    pub root: CaCertificate,
    /// True when it was generated just now.
    pub created: bool,
}

impl RootSource {
    /// Load and cross-check a root brought as files (certificate, key, and
    /// that they belong together, a CA, unexpired), without keeping it;
    /// nothing to check for a generated root. `meshca config check` and
    /// `serve` run this same check.
    ///
    /// # Errors
    /// As [`RootSource::load_or_create`] for files.
    pub fn check(&self) -> Result<(), TresorError> {
        match self {
            Self::Files { cert, key } => load_files(cert, key).map(drop),
            Self::Generated { .. } | Self::InCustody { .. } => Ok(()),
        }
    }

    /// Load the root, generating and persisting it first if this is a
    /// generated root that does not exist yet.
    ///
    /// Creation is atomic: the files are written into a temporary directory
    /// that is then renamed into place, so two daemons starting on one state
    /// directory end up with the same root, and a crash never leaves a
    /// certificate without its key.
    ///
    /// # Errors
    /// See [`TresorError`].
    /// A root in custody is not for this function: only its custodian can
    /// sign it.
    pub fn load_or_create(&self) -> Result<StoredRoot, TresorError> {
        match self {
            Self::InCustody { key_name, .. } => Err(TresorError::InCustody(key_name.clone())),
            Self::Files { cert, key } => Ok(StoredRoot {
                root: load_files(cert, key)?,
                created: false,
            }),
            Self::Generated {
                dir,
                algorithm,
                validity,
                common_name,
                ..
            } => {
                remove_staging_debris(dir);
                if dir.join(CERT_FILE).exists() {
                    return Ok(StoredRoot {
                        root: load_files(&dir.join(CERT_FILE), &dir.join(KEY_FILE))?,
                        created: false,
                    });
                }
                let root = CaCertificate::generate_root(*algorithm, *validity, common_name)?;
                if persist(dir, &root)? {
                    Ok(StoredRoot {
                        root,
                        created: true,
                    })
                } else {
                    // Another process created it first: use theirs.
                    Ok(StoredRoot {
                        root: load_files(&dir.join(CERT_FILE), &dir.join(KEY_FILE))?,
                        created: false,
                    })
                }
            }
        }
    }
}

/// The certificate of a root whose key is held in custody, kept in `dir`
/// (`root.crt`, and no key file), or `None` before the first start.
///
/// # Errors
/// The certificate cannot be read, or `dir` holds a key file: it belongs
/// to a root kept in files, which a custody key must not be mixed with.
pub fn load_custody_root(dir: &Path) -> Result<Option<Vec<u8>>, TresorError> {
    remove_staging_debris(dir);
    if dir.join(KEY_FILE).exists() {
        return Err(TresorError::Certificate(format!(
            "{} holds a private key file: it is the directory of a root kept in files, not of one whose key is in custody",
            dir.display()
        )));
    }
    let cert = dir.join(CERT_FILE);
    match fs::read(&cert) {
        Ok(pem) => Ok(Some(pem)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &cert)(e)),
    }
}

/// Keep the certificate of a new root whose key is in custody in `dir`,
/// atomically; false if another process kept one there first (use
/// theirs, from [`load_custody_root`]).
///
/// # Errors
/// The directory or the file could not be written.
pub fn save_custody_root(dir: &Path, root: &CaCertificate) -> Result<bool, TresorError> {
    persist(dir, root)
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> TresorError + 'a {
    move |source| TresorError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn load_files(cert: &Path, key: &Path) -> Result<CaCertificate, TresorError> {
    let cert_pem = fs::read(cert).map_err(io_err("read", cert))?;
    let meta = fs::metadata(key).map_err(io_err("read", key))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %key.display(), "the CA key file is readable by group or others; chmod 600 it");
    }
    let key_pem = zeroize::Zeroizing::new(fs::read(key).map_err(io_err("read", key))?);
    CaCertificate::from_pem(&cert_pem, &key_pem)
}

/// Prefix of the directory a new root is staged in before its rename.
const STAGING_PREFIX: &str = ".tresor-";

/// Remove staging directories a killed start left beside `dir`: each
/// may hold a CA private key that nothing else will ever remove. Only
/// the daemon generates roots, one per state directory, so none can be in
/// use now.
fn remove_staging_debris(dir: &Path) {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX)
        {
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::warn!(path = %entry.path().display(), "removed the staging directory of an interrupted start")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "failed to remove the staging directory of an interrupted start")
                }
            }
        }
    }
}

/// Write `root` into `dir` atomically; false if `dir` appeared meanwhile.
fn persist(dir: &Path, root: &CaCertificate) -> Result<bool, TresorError> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let staging = staging_dir(parent)?;
    // A key in custody stays there: only its certificate is kept.
    if !root.in_custody() {
        write_file(
            &staging.path().join(KEY_FILE),
            root.key_pem()?.as_bytes(),
            0o600,
        )?;
    }
    write_file(
        &staging.path().join(CERT_FILE),
        root.cert_pem().as_bytes(),
        0o644,
    )?;
    let staged = staging.keep();
    match fs::rename(&staged, dir) {
        Ok(()) => Ok(true),
        Err(_) if dir.join(CERT_FILE).exists() => {
            let _ = fs::remove_dir_all(&staged);
            Ok(false)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staged);
            Err(io_err("create", dir)(e))
        }
    }
}

/// A new staging directory in `parent`, 0700 before anything is put in it:
/// it holds the CA key until the rename.
fn staging_dir(parent: &Path) -> Result<tempfile::TempDir, TresorError> {
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(parent)
        .map_err(io_err("create a directory in", parent))?;
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o700))
        .map_err(io_err("restrict", staging.path()))?;
    Ok(staging)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TresorError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(contents).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_staging_directory_of_a_new_root_is_private_before_the_key_goes_in() {
        let parent = tempfile::tempdir().expect("tempdir");
        let staging = staging_dir(parent.path()).expect("staging");
        let mode = fs::metadata(staging.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(staging
            .path()
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(STAGING_PREFIX)));
    }

    #[test]
    fn staging_debris_beside_the_root_directory_is_removed() {
        let parent = tempfile::tempdir().expect("tempdir");
        let debris = parent.path().join(".tresor-x1");
        fs::create_dir(&debris).expect("debris");
        fs::write(debris.join(KEY_FILE), "key").expect("key");
        let other = parent.path().join("bundle");
        fs::create_dir(&other).expect("other");
        remove_staging_debris(&parent.path().join("tresor"));
        assert!(!debris.exists());
        assert!(other.exists(), "only staging directories go");
    }
}
