//! Async-signal-safe helpers for the code between `fork` and `exec` (see `child`): clocks, waiting,
//! killing children, writing small files, dropping capabilities. Raw system calls on stack data only.

use std::ffi::CString;
use std::io;

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

#[allow(clippy::unnecessary_cast)] // time_t and c_long are 32 bits on some targets
pub(crate) fn now_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`; async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i64 * 1000 + ts.tv_nsec as i64 / 1_000_000
}

pub(crate) fn sleep_ms(ms: i64) {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: (ms * 1_000_000) as libc::c_long,
    };
    // SAFETY: nanosleep reads `ts`; async-signal-safe.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// Waits until `child` has exited (without reaping it) or `timeout_ms` passed.
///
/// # Safety
/// `child` must be a child of this process; safe to call after `fork` (async-signal-safe calls only).
pub(crate) unsafe fn wait_exit_or_timeout(child: libc::pid_t, timeout_ms: libc::c_int) {
    let deadline = now_ms() + timeout_ms as i64;
    // SAFETY: raw system calls with stack-allocated arguments.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, child, 0) as libc::c_int;
        if pidfd >= 0 {
            let mut pfd = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                let left = (deadline - now_ms()).max(0) as libc::c_int;
                let r = libc::poll(&mut pfd, 1, left);
                if r >= 0 || *libc::__errno_location() != libc::EINTR {
                    break;
                }
            }
            libc::close(pidfd);
            return;
        }
        // Kernels before 5.3: look every millisecond.
        while now_ms() < deadline {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                child as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            );
            if r != 0 || info.si_pid() != 0 {
                return;
            }
            sleep_ms(1);
        }
    }
}

/// SIGKILLs every child listed in `/proc/self/task/<pid>/children` (needs CONFIG_PROC_CHILDREN;
/// without it nothing happens). No allocation: the path and the pids are handled in stack buffers.
///
/// # Safety
/// Meant for a forked supervisor: it signals every child of the calling thread.
pub(crate) unsafe fn kill_children() {
    let mut path = [0u8; 64];
    let mut len = 0;
    for b in b"/proc/self/task/" {
        path[len] = *b;
        len += 1;
    }
    // SAFETY: getpid cannot fail.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 12];
    let mut nd = 0;
    loop {
        digits[nd] = b'0' + (pid % 10) as u8;
        nd += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    while nd > 0 {
        nd -= 1;
        path[len] = digits[nd];
        len += 1;
    }
    for b in b"/children\0" {
        path[len] = *b;
        len += 1;
    }
    // SAFETY: `path` is NUL-terminated; reads go into a stack buffer.
    unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 1024];
        let mut cur: libc::pid_t = 0;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            for &b in &buf[..n as usize] {
                if b.is_ascii_digit() {
                    cur = cur * 10 + (b - b'0') as libc::pid_t;
                } else if cur > 0 {
                    libc::kill(cur, libc::SIGKILL);
                    cur = 0;
                }
            }
        }
        if cur > 0 {
            libc::kill(cur, libc::SIGKILL);
        }
        libc::close(fd);
    }
}

/// open + write + close, all async-signal-safe.
///
/// # Safety
/// Safe to call after `fork` (no allocation); the caller owns the decision to write `path`.
pub(crate) unsafe fn write_file(path: &CString, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated, `bytes` valid for its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(last_err());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = last_err();
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Empties the bounding, ambient, inheritable, permitted and effective capability sets, so that
/// a root-owned harness runs samples as an ordinary uid 0 process: no CAP_SYS_ADMIN, no
/// CAP_DAC_OVERRIDE, no CAP_KILL. After `exec` the sets stay empty (bounding set is empty).
///
/// # Safety
/// Changes the calling process's capabilities for good: call only in a forked child before `exec`.
pub(crate) unsafe fn drop_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl/capset with valid pointers to stack data.
    unsafe {
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(last_err());
            }
        }
        // Ambient capabilities exist since Linux 4.3; EINVAL before that means there are none.
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
            && *libc::__errno_location() != libc::EINVAL
        {
            return Err(last_err());
        }
        let mut hdr = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) != 0 {
            return Err(last_err());
        }
    }
    Ok(())
}
