//! A private cgroup subtree with the `pids` controller: the process-count limit that holds even for
//! root (for whom the kernel does not enforce RLIMIT_NPROC), and a complete list of every process a
//! sample started, whatever it did to its process group or session, for the final kill.
//!
//! Layout: `<our cgroup>/canon-sandbox-<pid>-<n>/c<k>`; v1 (a `pids` hierarchy) and v2 (the unified
//! hierarchy, when the controller can be delegated to our subtree) are both handled. A sample's
//! cgroup is emptied after the sample and reused by the next one (creating and removing a cgroup
//! costs milliseconds); all are removed with the subtree.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Our private subtree; removed on drop.
#[derive(Debug)]
pub(crate) struct CgroupBase {
    pub dir: PathBuf,
    pub v2: bool,
    /// Emptied cgroups ready for the next sample.
    free: Mutex<Vec<SampleCgroup>>,
    made: AtomicU64,
}

/// One sample's cgroup.
#[derive(Debug)]
pub(crate) struct SampleCgroup {
    pub dir: PathBuf,
    pub procs: OwnedFd,
    v2: bool,
}

static NEXT_BASE: AtomicU64 = AtomicU64::new(0);

/// Finds the cgroup directory of this process in a hierarchy with the pids controller.
fn own_pids_dir() -> Option<(PathBuf, bool)> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let self_cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut v1_mount = None;
    let mut v2_mount = None;
    for line in mountinfo.lines() {
        let (pre, post) = line.split_once(" - ")?;
        let mount_point = pre.split(' ').nth(4)?;
        let mut post = post.split(' ');
        let fstype = post.next()?;
        let options = post.nth(1).unwrap_or("");
        if fstype == "cgroup" && options.split(',').any(|o| o == "pids") {
            v1_mount = Some(PathBuf::from(mount_point));
        } else if fstype == "cgroup2" && v2_mount.is_none() {
            v2_mount = Some(PathBuf::from(mount_point));
        }
    }
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if let Some(m) = &v1_mount
            && controllers.split(',').any(|c| c == "pids")
        {
            return Some((m.join(rel), false));
        }
        if controllers.is_empty()
            && let Some(m) = &v2_mount
        {
            let dir = m.join(rel);
            let ctl = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            if v1_mount.is_none() && ctl.split_whitespace().any(|c| c == "pids") {
                return Some((dir, true));
            }
        }
    }
    None
}

impl CgroupBase {
    /// Creates our subtree, or says why it cannot.
    pub fn create() -> Result<Self, String> {
        let (own, v2) = own_pids_dir().ok_or("no cgroup hierarchy with the pids controller")?;
        let n = NEXT_BASE.fetch_add(1, Ordering::Relaxed);
        let dir = own.join(format!("canon-sandbox-{}-{n}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let base = CgroupBase {
            dir,
            v2,
            free: Mutex::new(Vec::new()),
            made: AtomicU64::new(0),
        };
        if v2 {
            // Children get pids.max only if the controller is enabled in our subtree.
            fs::write(base.dir.join("cgroup.subtree_control"), "+pids")
                .map_err(|e| format!("cannot delegate pids in {}: {e}", base.dir.display()))?;
        }
        Ok(base)
    }

    /// An empty cgroup for one sample, limited to `max_pids` tasks: a reused one or a new one.
    pub fn take(&self, max_pids: u64) -> io::Result<SampleCgroup> {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        let cg = match reused {
            Some(cg) => cg,
            None => {
                let dir = self
                    .dir
                    .join(format!("c{}", self.made.fetch_add(1, Ordering::Relaxed)));
                fs::create_dir(&dir)?;
                let procs = fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"));
                match procs {
                    Ok(f) => SampleCgroup {
                        dir,
                        procs: f.into(),
                        v2: self.v2,
                    },
                    Err(e) => {
                        let _ = fs::remove_dir(&dir);
                        return Err(e);
                    }
                }
            }
        };
        fs::write(cg.dir.join("pids.max"), max_pids.to_string())?;
        Ok(cg)
    }

    /// Returns an emptied cgroup for reuse.
    pub fn give_back(&self, cg: SampleCgroup) {
        if let Ok(mut f) = self.free.lock() {
            f.push(cg);
        }
    }
}

impl Drop for CgroupBase {
    fn drop(&mut self) {
        if let Ok(free) = self.free.get_mut() {
            free.clear(); // each removes its directory
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

impl Drop for SampleCgroup {
    /// A cgroup not given back (its run failed) or dropped with the pool: remove it (empty by then;
    /// rmdir fails harmlessly otherwise).
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

fn pids_in(dir: &Path) -> Vec<libc::pid_t> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl SampleCgroup {
    /// SIGKILLs everything in the cgroup until it is empty. Returns the number of processes that
    /// could not be killed within `deadline` (0 on success).
    pub fn kill_all(&self, deadline: Duration) -> usize {
        let start = Instant::now();
        let kill_file = self.dir.join("cgroup.kill");
        loop {
            let pids = pids_in(&self.dir);
            if pids.is_empty() {
                return 0;
            }
            if start.elapsed() > deadline {
                return pids.len();
            }
            if !(self.v2 && fs::write(&kill_file, "1").is_ok()) {
                for pid in pids {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
