//! Puts the build's target triple and git commit into `xxl-edge --version`, so that a binary
//! found on a device says what it is.
//!
//! The commit comes from, in this order: the `XXL_EDGE_GIT_COMMIT` environment variable (for
//! packagers building from an export); `git` when this crate is the top of a work tree; the
//! `.cargo_vcs_info.json` that `cargo package` writes into a source tarball; else `unknown`.
//! Only the standard library is used: a build dependency would be compiled again for the host
//! in every cross build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Enough hex digits to name a commit unambiguously in this repository, short enough to read.
const COMMIT_LEN: usize = 12;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=XXL_EDGE_GIT_COMMIT");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=XXL_EDGE_BUILD_TARGET={target}");

    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = from_env()
        .or_else(|| from_git(&dir))
        .or_else(|| from_vcs_info(&dir))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=XXL_EDGE_GIT_COMMIT={commit}");
}

fn from_env() -> Option<String> {
    let c = std::env::var("XXL_EDGE_GIT_COMMIT").ok()?;
    let c = c.trim();
    (!c.is_empty()).then(|| c.to_string())
}

/// The commit of HEAD, but only if `dir` is the top of the work tree: a tarball unpacked inside
/// some other repository must not report that repository's commit.
fn from_git(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if std::fs::canonicalize(&top).ok()? != std::fs::canonicalize(dir).ok()? {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--verify", "HEAD"])?;
    // Rebuild when HEAD moves (checkout, commit): HEAD itself, the branch it points at (loose
    // or packed). Only files that exist are named: cargo reruns the script on every build for
    // one that does not.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for name in watch {
        // Relative to `dir` when git answers with a relative path.
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &name]).map(|p| dir.join(p)) {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(short(&commit))
}

/// `cargo package` records the commit it was made from as `"sha1": "…"`.
fn from_vcs_info(dir: &Path) -> Option<String> {
    let path = dir.join(".cargo_vcs_info.json");
    let text = std::fs::read_to_string(&path).ok()?;
    println!("cargo:rerun-if-changed={}", path.display());
    let rest = &text[text.find("\"sha1\"")? + "\"sha1\"".len()..];
    let rest = &rest[rest.find('"')? + 1..];
    let sha = &rest[..rest.find('"')?];
    (!sha.is_empty() && sha.chars().all(|c| c.is_ascii_hexdigit())).then(|| short(sha))
}

fn short(commit: &str) -> String {
    commit.chars().take(COMMIT_LEN).collect()
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}
