//! Files and directories only the executor's user may read: the data directory holds job
//! parameters, run logs and GLUE scripts.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` and any missing parents with mode 0700 (existing ones keep their mode).
pub(crate) fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Replaces `path` with `bytes` as a whole: written to `tmp` (mode 0600), then renamed over it,
/// so a reader never sees half a file.
pub(crate) fn replace(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(tmp, path, bytes, false)
}

/// As [`replace`], and on disk when it returns (the file synced before the rename, the directory
/// after it): for files a restart after a power cut must find whole.
pub(crate) fn replace_durably(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(tmp, path, bytes, true)
}

fn write(tmp: &Path, path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(tmp, path)?;
    match path.parent() {
        Some(dir) if sync => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}
