//! Fuzz the agent's /proc and cgroup parsers: any bytes, never a panic, and what parses keeps
//! its invariants. Run: `cargo +nightly fuzz run agent_procfs` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper::agent::procfs;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(stat) = procfs::parse_stat(&text) {
        // comm lies between the first '(' and the last ')'.
        assert!(text.contains(&format!("({})", stat.comm)));
        let _ = (stat.is_zombie(), stat.is_kernel_thread());
    }
    if let Ok(cg) = procfs::parse_cgroup_file(&text) {
        if let Some((_, at)) = &cg.pids {
            check(at);
        }
        if let Some(k) = &cg.kube {
            check(k);
        }
    }
    for line in text.lines() {
        // Cgroup paths are absolute (parse_cgroup_line insists).
        if let Some(k) = procfs::parse_kube_path(line).filter(|_| line.starts_with('/')) {
            check(&k);
            assert!(line.starts_with(k.pod_cgroup));
        }
    }
    let _ = procfs::parse_pids_current(&text);
    let _ = procfs::parse_pids_max(&text);
});

fn check(k: &procfs::KubeCgroup<'_>) {
    assert!(k.pod_uid.len() == 36 || k.pod_uid.len() == 32, "{k:?}");
    assert!(!k.pod_uid.contains('_'));
    if let Some(id) = k.container_id {
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{k:?}");
    }
    let from_root = k.pod_cgroup_from_root();
    assert!(from_root.starts_with('/'), "{from_root}");
    assert!(!from_root.split('/').any(|s| s == ".."), "{from_root}");
}
