//! How the per-sample process count is limited on this machine, in order of preference:
//! RLIMIT_NPROC under a per-sample real uid (root, capabilities dropped), RLIMIT_NPROC inside the
//! sample's own user namespace (others), a `pids` cgroup, and, failing all, an approximate
//! RLIMIT_NPROC shared with every process of the uid (reported as unavailable).

use super::cgroup;
use super::probe::{Facilities, Facility};
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};

/// Real uids given to samples when running as root, so samples running at the same time never
/// share a process count.
const REAL_UID_BASE: libc::uid_t = 1_900_000_000;
const REAL_UID_SPAN: u32 = 100_000_000;

/// A real uid no other running sample has: process id and a process-wide counter mixed in.
pub(crate) fn sample_uid() -> libc::uid_t {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 1000;
    let slot = (std::process::id() % (REAL_UID_SPAN / 1000)) * 1000 + n as u32;
    REAL_UID_BASE + slot
}

/// Decides how the per-sample process count is limited: (cgroup, RLIMIT_NPROC, per-sample real uid,
/// the report line). RLIMIT_NPROC is preferred where the kernel enforces it exactly per sample:
/// moving a process into a cgroup v1 waits for an RCU grace period (~20 ms a sample here), so the
/// pids cgroup is the fallback, not the default.
pub(crate) fn process_limit(
    f: &Facilities,
    max: u64,
    off: bool,
    cg_off: bool,
) -> (Option<cgroup::CgroupBase>, Option<u64>, bool, Facility) {
    let name = "process-count limit";
    if off {
        return (
            None,
            None,
            false,
            Facility {
                name,
                available: false,
                detail: "turned off by configuration".into(),
            },
        );
    }
    if f.is_root && f.drop_caps {
        // Root is exempt from RLIMIT_NPROC only as real uid 0 or with CAP_SYS_ADMIN/RESOURCE.
        let detail = format!(
            "RLIMIT_NPROC = {max} under a per-sample real uid (no capabilities), which also lets the final sweep kill every process of the sample"
        );
        return (
            None,
            Some(max),
            true,
            Facility {
                name,
                available: true,
                detail,
            },
        );
    }
    if !f.is_root && f.user_ns {
        let detail = format!(
            "RLIMIT_NPROC = {} counted inside the sample's own user namespace",
            max + 1
        );
        return (
            None,
            Some(max + 1),
            false,
            Facility {
                name,
                available: true,
                detail,
            },
        );
    }
    let cg = if cg_off {
        Err("turned off by configuration".to_string())
    } else {
        cgroup::CgroupBase::create()
    };
    match cg {
        Ok(base) => {
            let detail = format!(
                "pids cgroup {} (pids.max = {}), which also lists every process for the final kill",
                base.dir.display(),
                max + 1
            );
            (
                Some(base),
                None,
                false,
                Facility {
                    name,
                    available: true,
                    detail,
                },
            )
        }
        Err(e) if f.is_root => {
            let detail = format!(
                "root with capabilities is exempt from RLIMIT_NPROC and the pids cgroup failed: {e}"
            );
            (
                None,
                None,
                false,
                Facility {
                    name,
                    available: false,
                    detail,
                },
            )
        }
        Err(e) => {
            // RLIMIT_NPROC counts every process of this uid: allow what already runs plus a budget.
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            let running = count_processes_of(uid);
            let cores = std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1);
            let limit = running + (max + 1) * cores * 2 + 32;
            let detail = format!(
                "approximate only: RLIMIT_NPROC = {limit} counts all processes of uid {uid} (no user namespace; no pids cgroup: {e})"
            );
            (
                None,
                Some(limit),
                false,
                Facility {
                    name,
                    available: false,
                    detail,
                },
            )
        }
    }
}

fn count_processes_of(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| e.metadata().map(|m| m.uid() == uid).unwrap_or(false))
        .count() as u64
}
