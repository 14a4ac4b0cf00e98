//! Atomic replacement of the agent's output files.
//!
//! `cert.pem`, `key.pem` and `ca.pem` are symlinks into `..data`, itself a
//! symlink to a directory holding one consistent set. A new set is written
//! to a fresh directory and `..data` is swapped with one rename, so a reader
//! never pairs a new certificate with an old key (the scheme the kubelet
//! uses for projected volumes).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::AgentError;

const DATA_LINK: &str = "..data";

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Replace the set of files in `dir` at once.
pub(super) fn write(dir: &Path, chain: &str, key: &str, bundle: &str) -> Result<(), AgentError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let staging = tempfile::Builder::new()
        .prefix("..set-")
        .tempdir_in(dir)
        .map_err(io("create a directory in", dir))?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", staging.path()))?;
    for (name, contents, mode) in [
        ("key.pem", key, 0o600),
        ("cert.pem", chain, 0o644),
        ("ca.pem", bundle, 0o644),
    ] {
        let path = staging.path().join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
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

    for name in ["cert.pem", "key.pem", "ca.pem"] {
        let path = dir.join(name);
        let target = Path::new(DATA_LINK).join(name);
        if std::fs::read_link(&path).ok().as_deref() != Some(target.as_path()) {
            let tmp = dir.join(format!("..{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp).map_err(io("create", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("replace", &path))?;
        }
    }
    if let Some(old) = previous.filter(|p| p.as_os_str() != staged_name) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_set_replaces_the_old_one_and_the_key_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "C1", "K1", "B1").expect("first");
        write(dir.path(), "C2", "K2", "B2").expect("second");
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
}
