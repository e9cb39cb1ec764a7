//! The API key that TCP clients must present: from `MCPSOCK_API_KEY`, the
//! config's `api_key`, or generated once and kept in a private file in the
//! data directory. It is never logged.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mcpsock_config::Secret;

/// Bytes of randomness in a generated key (hex-encoded in the file).
const GENERATED_KEY_BYTES: usize = 32;

/// Where a generated key is kept.
pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api-key")
}

/// Reads the key file, creating it with a new random key when it does not
/// exist. The file must be ours and closed to everyone else.
pub fn load_or_create_key(data_dir: &Path) -> anyhow::Result<Secret> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let path = key_file(data_dir);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_o_nofollow())
        .open(&path)
    {
        Ok(mut file) => {
            let mut bytes = [0u8; GENERATED_KEY_BYTES];
            getrandom::fill(&mut bytes)
                .map_err(|error| anyhow::anyhow!("no randomness for the API key: {error}"))?;
            let key: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            // create_new honours the umask; make the mode exactly 0600.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .with_context(|| format!("cannot secure {}", path.display()))?;
            writeln!(file, "{key}").with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(file = %path.display(), "generated an API key for TCP clients");
            Ok(Secret::new(key))
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_key(&path),
        Err(error) => {
            Err(error).with_context(|| format!("cannot create the API key file {}", path.display()))
        }
    }
}

fn read_key(path: &Path) -> anyhow::Result<Secret> {
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc_o_nofollow()).open(path).with_context(
            || format!("cannot open the API key file {} (it must not be a symlink)", path.display()),
        )?;
    check_private(&file, path)?;
    let mut text = String::new();
    file.read_to_string(&mut text).with_context(|| format!("cannot read {}", path.display()))?;
    let key = text.trim();
    if key.len() < 16 {
        bail!(
            "the API key in {} is shorter than 16 characters; delete the file to have a new one generated",
            path.display()
        );
    }
    Ok(Secret::new(key))
}

fn check_private(file: &File, path: &Path) -> anyhow::Result<()> {
    let metadata = file.metadata()?;
    let uid = rustix::process::geteuid().as_raw();
    if metadata.uid() != uid {
        bail!(
            "the API key file {} belongs to uid {}, not to this user; refusing it",
            path.display(),
            metadata.uid()
        );
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the API key file {} has mode {mode:04o}, so others may have read it; run `chmod 600 {}` (and consider a new key)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create_key(&data).unwrap();
        assert_eq!(first.expose().len(), 2 * GENERATED_KEY_BYTES);
        let metadata = std::fs::metadata(key_file(&data)).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_key(&data).unwrap(), first);
        let other = load_or_create_key(&dir.path().join("other")).unwrap();
        assert_ne!(other, first, "keys are random");
    }

    #[test]
    fn refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_key(dir.path()).unwrap();
        std::fs::set_permissions(key_file(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create_key(dir.path()).unwrap_err().to_string();
        assert!(error.contains("has mode 0644, so others may have read it"), "{error}");
    }
}
