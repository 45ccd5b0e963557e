//! The harness side of one run: finding the interpreter, waiting for the supervisor, and turning
//! what the run left behind (verdict file, exit status, stderr) into an [`Outcome`].

use super::{Outcome, SandboxError};
use std::fs;
use std::io::Read;
use std::os::fd::RawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Waits for `child` to exit (without reaping it); false when `timeout` passed first.
pub(crate) fn wait_until_exit(child: &Child, timeout: Duration) -> Result<bool, SandboxError> {
    let pid = child.id() as libc::pid_t;
    // SAFETY: pidfd_open/poll/close/waitid on our own child with stack-allocated arguments.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd;
        if pidfd >= 0 {
            let mut pfd = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            let deadline = std::time::Instant::now() + timeout;
            let ready = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let r = libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32);
                if r > 0 {
                    break true;
                }
                if r == 0 {
                    break false;
                }
                if *libc::__errno_location() != libc::EINTR {
                    let e = std::io::Error::last_os_error();
                    libc::close(pidfd);
                    return Err(SandboxError::Wait(e));
                }
            };
            libc::close(pidfd);
            return Ok(ready);
        }
        // Kernels before 5.3: poll waitid(WNOWAIT) every millisecond.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            );
            if r == 0 && info.si_pid() != 0 {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

pub(crate) fn verdict(
    result_path: &Path,
    err_path: &Path,
    timed_out: bool,
    status: ExitStatus,
) -> Outcome {
    let said = fs::read_to_string(result_path).unwrap_or_default();
    let said = said.trim();
    if said == "passed" {
        return Outcome::Passed;
    }
    if let Some(reason) = said.strip_prefix("failed:") {
        return Outcome::Failed(reason.trim().to_string());
    }
    if timed_out {
        return Outcome::TimedOut;
    }
    let signal = match (status.code(), status.signal()) {
        (Some(c), _) if c > 128 => Some(c - 128),
        (_, Some(s)) => Some(s),
        _ => None,
    };
    match signal {
        Some(libc::SIGXCPU) => Outcome::TimedOut,
        Some(libc::SIGXFSZ) => Outcome::Failed("file size limit exceeded".into()),
        Some(s) => Outcome::Failed(format!("killed by signal {s}")),
        None => {
            let code = status.code().unwrap_or(-1);
            let tail = last_line(err_path);
            Outcome::Failed(format!(
                "exited with status {code} before reporting{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(" ({tail})")
                }
            ))
        }
    }
}

/// The last non-empty line of a (possibly long) stderr file, at most 300 characters.
fn last_line(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        use std::io::{Seek, SeekFrom};
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let _ = f.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    line.chars().take(300).collect()
}

/// Finds the real executable and the directories the interpreter reads modules from.
pub(crate) fn resolve_interpreter(
    python: &Path,
    site: bool,
) -> Result<(PathBuf, Vec<PathBuf>), SandboxError> {
    let script = "import os, sys\nfor p in [sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]:\n    print(os.path.realpath(p))\n";
    let mut cmd = Command::new(python);
    cmd.arg("-I");
    if !site {
        cmd.arg("-S");
    }
    let err = |message: String| SandboxError::Interpreter {
        python: python.to_path_buf(),
        message,
    };
    let out = cmd
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(PathBuf::from);
    let exe = lines
        .next()
        .filter(|p| p.is_file())
        .ok_or_else(|| err("sys.executable is not a file".into()))?;
    let mut read: Vec<PathBuf> = vec![exe.clone()];
    for p in lines {
        if p.exists() && !read.contains(&p) {
            read.push(p);
        }
    }
    Ok((exe, read))
}
