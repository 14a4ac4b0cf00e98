//! Atomic replacement of the agent's output files.
//!
//! `cert.pem`, `key.pem` and `ca.pem` are symlinks into `..data`, itself a
//! symlink to a directory holding one consistent set. A new set is written
//! to a fresh directory and `..data` is swapped with one rename, so a reader
//! never pairs a new certificate with an old key (the scheme the kubelet
//! uses for projected volumes).
//!
//! With the SPIFFE layout on, the set also holds the SPIFFE filesystem
//! delivery files: `credential-bundle.pem` (the key, then the chain) and
//! `<trust-domain>.trust-bundle.pem`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{io, AgentError, Held};

const DATA_LINK: &str = "..data";

/// The output directory and which files it holds.
pub(super) struct Layout {
    pub dir: std::path::PathBuf,
    /// Also the SPIFFE filesystem layout.
    pub spiffe: bool,
}

impl Layout {
    /// Replace the set of files with those of `held`, at once, on the
    /// blocking pool.
    pub(super) async fn write(&self, held: &Held) -> Result<(), AgentError> {
        let mut files = vec![
            (
                "key.pem".to_owned(),
                zeroize::Zeroizing::new(held.key_pem.to_string()),
                0o600,
            ),
            ("cert.pem".to_owned(), held.chain_pem.clone().into(), 0o644),
            ("ca.pem".to_owned(), held.bundle_pem.clone().into(), 0o644),
        ];
        if let Some(crls) = &held.crl_pem {
            files.push(("crl.pem".to_owned(), crls.clone().into(), 0o644));
        }
        if self.spiffe {
            let credential = format!("{}{}", held.key_pem.as_str(), held.chain_pem);
            files.push(("credential-bundle.pem".to_owned(), credential.into(), 0o600));
            let trust = format!("{}.trust-bundle.pem", held.identity.trust_domain());
            files.push((trust, held.bundle_pem.clone().into(), 0o644));
            for (id, bundle) in held.federated.iter() {
                let td = id.trim_start_matches("spiffe://");
                if !bundle.x509_authorities.is_empty() {
                    files.push((format!("{td}.trust-bundle.pem"), bundle.pem().into(), 0o644));
                }
            }
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write(&dir, &files))
            .await
            .map_err(|e| AgentError::Setup(format!("writing the files was interrupted: {e}")))?
    }
}

/// One file of a set: name, contents (zeroized after writing: it may be a
/// key) and mode.
type Entry = (String, zeroize::Zeroizing<String>, u32);

/// Replace the set of files in `dir` at once. Blocking: run on the
/// blocking pool ([`Layout::write`]).
#[allow(clippy::disallowed_methods)]
fn write(dir: &Path, files: &[Entry]) -> Result<(), AgentError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let staging = tempfile::Builder::new()
        .prefix("..set-")
        .tempdir_in(dir)
        .map_err(io("create a directory in", dir))?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", staging.path()))?;
    for (name, contents, mode) in files {
        let path = staging.path().join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&path)
            .map_err(io("create", &path))?;
        f.write_all(contents.as_bytes())
            .map_err(io("write", &path))?;
        f.sync_all().map_err(io("write", &path))?;
    }
    let staged = staging.keep();
    let staged_name = staged
        .file_name()
        .ok_or_else(|| AgentError::Setup("staging directory has no name".into()))?
        .to_owned();

    let link = dir.join(DATA_LINK);
    let previous = std::fs::read_link(&link).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&staged_name, &tmp_link).map_err(io("create", &tmp_link))?;
    std::fs::rename(&tmp_link, &link).map_err(io("replace", &link))?;

    for (name, _, _) in files {
        let path = dir.join(name);
        let target = Path::new(DATA_LINK).join(name);
        if std::fs::read_link(&path).ok().as_deref() != Some(target.as_path()) {
            let tmp = dir.join(format!("..{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp).map_err(io("create", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("replace", &path))?;
        }
    }
    remove_links_not_in(dir, files);
    if let Some(old) = previous.filter(|p| p.as_os_str() != staged_name) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// Remove the links of an earlier set's files that this set no longer
/// has (a federated trust domain's bundle, say): they would dangle.
/// Blocking, as [`write`].
#[allow(clippy::disallowed_methods)]
fn remove_links_not_in(dir: &Path, files: &[Entry]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = std::fs::read_link(&path).is_ok_and(|t| t.starts_with(DATA_LINK));
        let kept = files
            .iter()
            .any(|(name, _, _)| entry.file_name() == name.as_str());
        if ours && !kept {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_set_replaces_the_old_one_and_the_key_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = |c: &str, k: &str, b: &str| -> Vec<Entry> {
            vec![
                ("key.pem".into(), k.to_owned().into(), 0o600),
                ("cert.pem".into(), c.to_owned().into(), 0o644),
                ("ca.pem".into(), b.to_owned().into(), 0o644),
            ]
        };
        write(dir.path(), &set("C1", "K1", "B1")).expect("first");
        write(dir.path(), &set("C2", "K2", "B2")).expect("second");
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).expect("read");
        assert_eq!(
            (read("cert.pem"), read("key.pem"), read("ca.pem")),
            ("C2".into(), "K2".into(), "B2".into())
        );
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sets = std::fs::read_dir(dir.path())
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("..set-"))
            })
            .count();
        assert_eq!(sets, 1, "the previous set is removed");
    }

    #[test]
    fn a_file_the_new_set_no_longer_has_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = |name: &str| -> Entry { (name.into(), "x".to_owned().into(), 0o644) };
        write(
            dir.path(),
            &[entry("ca.pem"), entry("b.test.trust-bundle.pem")],
        )
        .expect("first");
        write(dir.path(), &[entry("ca.pem")]).expect("second");
        assert!(dir.path().join("ca.pem").exists());
        let gone = dir.path().join("b.test.trust-bundle.pem");
        assert!(
            std::fs::symlink_metadata(&gone).is_err(),
            "a dangling link was left"
        );
    }
}
