//! A really full disk: the data directory lives on a small tmpfs that the test fills. Needs root
//! to mount (as on the project's machines and CI); elsewhere it says so and does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use support::*;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()) * u64::from(st.fragment_size());
    free
}

#[tokio::test]
async fn a_full_disk_refuses_new_runs_keeps_accepted_ones_and_recovers() {
    let mnt = tempfile::tempdir().unwrap();
    let Some(_fs) = Tmpfs::mount(mnt.path(), "64m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the refusal message itself is covered by runner::a_full_disk_refuses_runs_with_a_clear_message");
        return;
    };
    let admin = FakeAdmin::start().await;
    let probe = Probe::new();
    let data = mnt.path().join("data");
    let min_free: u64 = 24 << 20;
    let mut cfg = test_config(&data, &admin.url(), "cache_bytes = 1048576\n");
    cfg.store.min_free_bytes = min_free;
    let ex = TestExecutor::start(sample_handlers(
        xxl_edge::Executor::builder().config(cfg),
        &probe,
    ))
    .await;
    assert_eq!(ex.run(1, "gateJobHandler", 1, json!({})).await, ok());
    probe.started(1).await;
    assert_eq!(ex.run(1, "gateJobHandler", 2, json!({})).await, ok());

    // Fill the disk to just under the threshold.
    let filler = mnt.path().join("filler");
    let fill = free_bytes(mnt.path()) - (min_free - (4 << 20));
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    let r = ex.run(3, "demoJobHandler", 3, json!({})).await;
    assert_eq!(r["code"], 500);
    let msg = r["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("disk full:") && msg.contains("free some space"),
        "{msg}"
    );

    // What was accepted before still runs and is called back.
    probe.gate.notify_one();
    probe.started(2).await;
    probe.gate.notify_one();
    assert_eq!(admin.callback(1).await["handleCode"], 200);
    assert_eq!(admin.callback(2).await["handleCode"], 200);
    assert!(admin.callbacks_for(3).is_empty());

    // Space returns: accepted again, by itself.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(ex.run(3, "demoJobHandler", 3, json!({})).await, ok());
    assert_eq!(admin.callback(3).await["handleCode"], 200);
    ex.shutdown().await;
}
