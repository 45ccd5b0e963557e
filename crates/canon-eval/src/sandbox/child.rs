//! What runs between `fork` and `exec`: the async-signal-safe half of the sandbox.
//!
//! Everything here is prepared in the parent (paths, map contents, limits, the Landlock ruleset fd,
//! the seccomp programs); the hook itself only makes system calls on that data: no allocation, no
//! locks, no formatting. It runs in two processes:
//!
//! ```text
//! harness ──fork──▶ supervisor (the pid std reports; dies with the harness: parent-death signal)
//!                     · joins the per-sample cgroup (write "0" to cgroup.procs)
//!                     · unshare(user?/pid/net namespaces) [+ uid/gid maps for the user ns], or
//!                       setns into the shared empty network namespace
//!                     · becomes a child subreaper: orphaned descendants are re-parented to it
//!                     · fork ─▶ sandboxed child: pid 1 of the new pid namespace, leader of a new
//!                     │         process group; parent-death signal SIGKILL
//!                     │         · rlimits (AS, CPU, NPROC, FSIZE, NOFILE, CORE)
//!                     │         · as root: a per-sample *real* uid (effective uid stays 0, so file
//!                     │           access is unchanged) and no capabilities — together they make the
//!                     │           kernel enforce RLIMIT_NPROC, which exempts real root
//!                     │         · Landlock restrict_self, then seccomp filters
//!                     │         · returns: std execs the interpreter
//!                     · closes every fd >= 3 (std's exec-error pipe too: `spawn` returns at exec)
//!                     · waits for the child's exit or the wall-clock limit (pidfd + poll)
//!                     · SIGKILLs the child's process group (pid 1 of a pid namespace: the kernel
//!                       then kills everything inside and waits for it before pid 1 is reaped)
//!                     · reaps the child and every adopted descendant, exits with the child's
//!                       status (128 + signal)
//! ```
//!
//! The supervisor exists because `unshare(CLONE_NEWPID)` moves only the caller's *children* into the
//! new namespace, and so that "the run is over" means "every process of the sample is gone".

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::sys::{
    drop_capabilities, kill_children, now_ms, sleep_ms, wait_exit_or_timeout, write_file,
};

/// `sock_filter` as seccompiler builds it; the layout of the kernel's `struct sock_filter`.
pub(crate) type Bpf = Vec<seccompiler::sock_filter>;

/// uid/gid maps written by the supervisor right after it enters a new user namespace.
#[derive(Debug, Clone)]
pub(crate) struct IdMaps {
    pub setgroups_path: CString,
    pub uid_map_path: CString,
    pub gid_map_path: CString,
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
}

impl IdMaps {
    /// Maps the caller's own uid and gid to themselves: no privilege inside, but a namespace of its own.
    pub fn identity() -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let c = |s: &str| CString::new(s).unwrap_or_default();
        IdMaps {
            setgroups_path: c("/proc/self/setgroups"),
            uid_map_path: c("/proc/self/uid_map"),
            gid_map_path: c("/proc/self/gid_map"),
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        }
    }
}

/// Resource limits applied to the sandboxed child (`None`: left as inherited).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub address_space: u64,
    pub cpu_seconds: u64,
    pub processes: Option<u64>,
    pub file_size: u64,
    pub open_files: u64,
}

/// Everything the hook needs, prepared before `fork`.
#[derive(Clone)]
pub(crate) struct ChildPlan {
    /// `cgroup.procs` of the per-sample cgroup, opened O_WRONLY|O_CLOEXEC.
    pub cgroup_procs: Option<RawFd>,
    /// `CLONE_NEW*` flags for the supervisor's `unshare`.
    pub unshare_flags: libc::c_int,
    /// A network namespace to enter instead of unsharing a new one.
    pub netns_fd: Option<RawFd>,
    pub id_maps: Option<IdMaps>,
    pub limits: Limits,
    pub drop_caps: bool,
    /// As root: the real uid to switch to (RLIMIT_NPROC is counted per real uid).
    pub real_uid: Option<libc::uid_t>,
    /// A Landlock ruleset fd (O_CLOEXEC) to restrict the child with.
    pub landlock_fd: Option<RawFd>,
    /// seccomp programs, installed in order (the kernel applies the strictest verdict).
    pub seccomp: Arc<Vec<Bpf>>,
    /// An fd (O_CLOEXEC) that must survive `exec`: the channel the verdict is written to.
    pub keep_fd: RawFd,
    /// Wall-clock limit the supervisor enforces, in milliseconds.
    pub timeout_ms: libc::c_int,
    /// The harness's pid (the supervisor's expected parent).
    pub harness_pid: libc::pid_t,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// Tags which step failed, in the exit status of a child that cannot report through std's pipe.
const EXIT_SETUP_FAILED: libc::c_int = 125;

impl ChildPlan {
    /// The `pre_exec` hook. Runs in the forked child; only async-signal-safe calls.
    ///
    /// # Safety
    /// Must be called only between `fork` and `exec` of a child process.
    pub unsafe fn run(&self) -> io::Result<()> {
        // SAFETY: (whole body) raw system calls on data owned by `self`, valid for the call.
        unsafe {
            // The supervisor dies with the harness (then its child dies with it, and with that
            // child a pid namespace's every process).
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(last_err());
            }
            if libc::getppid() != self.harness_pid {
                libc::_exit(EXIT_SETUP_FAILED);
            }
            if let Some(fd) = self.cgroup_procs {
                // "0" means "the writing process" in both cgroup v1 and v2.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(last_err());
                }
            }
            if self.unshare_flags != 0 && libc::unshare(self.unshare_flags) != 0 {
                return Err(last_err());
            }
            if let Some(fd) = self.netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(last_err());
            }
            if let Some(maps) = &self.id_maps {
                write_file(&maps.setgroups_path, b"deny")?;
                write_file(&maps.uid_map_path, &maps.uid_map)?;
                write_file(&maps.gid_map_path, &maps.gid_map)?;
            }
            let supervisor = libc::getpid();
            if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                return Err(last_err());
            }
            let pid = libc::fork();
            if pid < 0 {
                return Err(last_err());
            }
            if pid > 0 {
                // Both sides set the group, so it is in place whichever runs first.
                libc::setpgid(pid, pid);
                supervise(pid, self.timeout_ms, self.real_uid);
            }
            // The sandboxed child from here on.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(last_err());
            }
            // If the supervisor died before the line above, nobody will kill us: leave. In a new pid
            // namespace getppid() is 0 (the parent lives outside it).
            let ppid = libc::getppid();
            if ppid != 0 && ppid != supervisor {
                libc::_exit(EXIT_SETUP_FAILED);
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(last_err());
            }
            if libc::fcntl(self.keep_fd, libc::F_SETFD, 0) != 0 {
                return Err(last_err());
            }
            self.set_limits()?;
            if let Some(uid) = self.real_uid
                && libc::setresuid(uid, 0, 0) != 0
            {
                return Err(last_err());
            }
            if self.drop_caps {
                drop_capabilities()?;
            }
            if self.landlock_fd.is_some() || !self.seccomp.is_empty() {
                // Landlock and unprivileged seccomp both require no_new_privs.
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(last_err());
                }
            }
            if let Some(fd) = self.landlock_fd
                && libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0
            {
                return Err(last_err());
            }
            for prog in self.seccomp.iter() {
                let fprog = libc::sock_fprog {
                    len: prog.len() as libc::c_ushort,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                let p: *const libc::sock_fprog = &fprog;
                if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, p, 0, 0) != 0 {
                    return Err(last_err());
                }
            }
        }
        Ok(())
    }

    /// Applies the resource limits with `setrlimit`.
    ///
    /// # Safety
    /// Runs in the forked child between `fork` and `exec` (from `run`): only async-signal-safe
    /// calls, no allocation.
    unsafe fn set_limits(&self) -> io::Result<()> {
        let l = &self.limits;
        let set = |res, soft: u64, hard: u64| {
            let r = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            // SAFETY: `r` is a valid rlimit for the duration of the call.
            if unsafe { libc::setrlimit(res, &r) } != 0 {
                Err(last_err())
            } else {
                Ok(())
            }
        };
        set(libc::RLIMIT_AS, l.address_space, l.address_space)?;
        // SIGXCPU at the soft limit, SIGKILL one second later.
        set(libc::RLIMIT_CPU, l.cpu_seconds, l.cpu_seconds + 1)?;
        if let Some(n) = l.processes {
            set(libc::RLIMIT_NPROC, n, n)?;
        }
        set(libc::RLIMIT_FSIZE, l.file_size, l.file_size)?;
        set(libc::RLIMIT_NOFILE, l.open_files, l.open_files)?;
        set(libc::RLIMIT_CORE, 0, 0)?;
        Ok(())
    }
}

/// The supervisor: drop every inherited fd, wait for the child or the time limit, kill the child's
/// process group, reap everything, mirror the child's status. Never returns.
///
/// With a per-sample real uid (`sweep_uid`), it finally takes that uid itself and `kill(-1)`s until
/// nothing is left: that reaches every process the sample made, even ones that left the group, and
/// nothing else (a signal from uid R reaches only processes whose real or saved uid is R).
///
/// # Safety
/// Runs in the forked supervisor process between `fork` and `exec`: only async-signal-safe calls,
/// and `child` must be this process's own child.
unsafe fn supervise(
    child: libc::pid_t,
    timeout_ms: libc::c_int,
    sweep_uid: Option<libc::uid_t>,
) -> ! {
    // SAFETY: plain system calls; `status` lives on this stack.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..4096 {
                libc::close(fd);
            }
        }
        wait_exit_or_timeout(child, timeout_ms);
        // The child is not reaped yet, so its pid (= its group id) cannot have been reused.
        libc::kill(-child, libc::SIGKILL);
        libc::kill(child, libc::SIGKILL);
        let mut status: libc::c_int = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(EXIT_SETUP_FAILED);
            }
        }
        // Reap descendants re-parented to us (we are their subreaper) until none is left; with a
        // sweep uid, kill everything of that uid on each round (kill(-1)'s return value cannot
        // tell whether anything was hit, "no children left" can). Give up after 2 s.
        let give_up = now_ms() + 2000;
        let sweep = match sweep_uid {
            Some(uid) => libc::setresuid(uid, uid, uid) == 0,
            None => false,
        };
        loop {
            if sweep {
                libc::kill(-1, libc::SIGKILL);
            } else {
                // Escaped descendants (a new session, no pid namespace) come back to us as their
                // parents die: kill whatever is our child, round after round.
                kill_children();
            }
            let r = libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG);
            if r < 0 && *libc::__errno_location() == libc::ECHILD {
                break;
            }
            if r == 0 {
                if now_ms() > give_up {
                    break;
                }
                sleep_ms(1);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            libc::_exit(128 + libc::WTERMSIG(status));
        }
        libc::_exit(EXIT_SETUP_FAILED)
    }
}
