//! Which isolation facilities this machine grants us, found by trying each one in a throw-away
//! child process (a namespace, a filter, a capability drop) once per process. Nothing is assumed
//! from the kernel version: containers, AppArmor and seccomp profiles of the host decide.

use super::child::{Bpf, IdMaps};
use super::policy;
use serde::Serialize;
use std::sync::OnceLock;

/// One facility: available (with how it is used) or not (with why).
#[derive(Debug, Clone, Serialize)]
pub struct Facility {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

/// What the sandbox can use on this machine.
#[derive(Debug, Clone)]
pub struct Facilities {
    pub is_root: bool,
    /// `CLONE_NEW*` flags the supervisor unshares (including `CLONE_NEWUSER` when not root).
    pub unshare_flags: libc::c_int,
    pub pid_ns: bool,
    pub net_ns: bool,
    pub user_ns: bool,
    pub landlock_abi: i32,
    pub seccomp: bool,
    pub drop_caps: bool,
    /// Every facility with its status, for reports (the process-count limit is added per `Sandbox`).
    pub list: Vec<Facility>,
}

impl Facilities {
    pub fn get(&self, name: &str) -> Option<&Facility> {
        self.list.iter().find(|f| f.name == name)
    }
}

/// Forks a child that runs `f` (async-signal-safe calls only) and exits 0 on success or with the
/// errno on failure; returns `Ok(())` or the errno's message.
fn in_child(f: &dyn Fn() -> libc::c_int) -> Result<(), String> {
    // SAFETY: the child only runs `f`, which makes raw system calls, then `_exit`s.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        if pid == 0 {
            let r = f();
            libc::_exit(if r == 0 { 0 } else { r.clamp(1, 255) });
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                return Err(std::io::Error::last_os_error().to_string());
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else if libc::WIFEXITED(status) {
            Err(std::io::Error::from_raw_os_error(libc::WEXITSTATUS(status)).to_string())
        } else {
            Err(format!("probe child died (status {status})"))
        }
    }
}

fn errno() -> libc::c_int {
    // SAFETY: reading the thread's errno.
    unsafe { *libc::__errno_location() }
}

fn try_unshare(flags: libc::c_int, maps: Option<&IdMaps>) -> Result<(), String> {
    in_child(&|| {
        // SAFETY: raw system calls in the probe child.
        unsafe {
            if libc::unshare(flags) != 0 {
                return errno();
            }
            if let Some(m) = maps {
                for (path, bytes) in [
                    (&m.setgroups_path, &b"deny"[..]),
                    (&m.uid_map_path, &m.uid_map[..]),
                    (&m.gid_map_path, &m.gid_map[..]),
                ] {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0
                        || libc::write(fd, bytes.as_ptr().cast(), bytes.len())
                            != bytes.len() as isize
                    {
                        return errno();
                    }
                    libc::close(fd);
                }
            }
            0
        }
    })
}

fn try_seccomp(progs: &[Bpf]) -> Result<(), String> {
    in_child(&|| {
        // SAFETY: raw system calls in the probe child with pointers into `progs`.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return errno();
            }
            for p in progs {
                let fprog = libc::sock_fprog {
                    len: p.len() as libc::c_ushort,
                    filter: p.as_ptr() as *mut libc::sock_filter,
                };
                let fp: *const libc::sock_fprog = &fprog;
                if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, fp, 0, 0) != 0 {
                    return errno();
                }
            }
            // The filter must deny what it says it denies.
            if libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) >= 0 {
                return libc::EPROTO;
            }
            0
        }
    })
}

fn try_drop_caps() -> Result<(), String> {
    in_child(&|| {
        // SAFETY: raw system call in the probe child.
        unsafe {
            if libc::prctl(libc::PR_CAPBSET_DROP, 21 /* CAP_SYS_ADMIN */, 0, 0, 0) != 0 {
                return errno();
            }
            0
        }
    })
}

/// Raw probe results: `Err(why)` for what this machine refuses.
#[derive(Debug, Clone)]
struct Probed {
    is_root: bool,
    user_ns: Result<(), String>,
    pid_ns: Result<(), String>,
    net_ns: Result<(), String>,
    landlock_abi: i32,
    seccomp: Result<(), String>,
    drop_caps: Result<(), String>,
}

fn probe() -> Probed {
    // SAFETY: geteuid cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    // Namespaces. Root unshares directly; others inside a new user namespace (uid mapped to itself).
    let (user_ns, pid_ns, net_ns) = if is_root {
        (
            Err("not needed as root".to_string()),
            try_unshare(libc::CLONE_NEWPID, None),
            try_unshare(libc::CLONE_NEWNET, None),
        )
    } else {
        let maps = IdMaps::identity();
        let u = try_unshare(libc::CLONE_NEWUSER, Some(&maps));
        let with_user = |flag| match &u {
            Ok(()) => try_unshare(libc::CLONE_NEWUSER | flag, Some(&maps)),
            Err(e) => Err(format!("needs a user namespace ({e})")),
        };
        let (p, n) = (with_user(libc::CLONE_NEWPID), with_user(libc::CLONE_NEWNET));
        (u, p, n)
    };
    let landlock_abi = policy::landlock_abi();
    // The strictest seccomp set this machine could need, to prove filters can be installed.
    let strict = policy::Guards {
        groups: true,
        signals: true,
    };
    let seccomp = policy::seccomp_programs(strict)
        .map_err(|e| e.to_string())
        .and_then(|p| try_seccomp(&p));
    let drop_caps = if is_root {
        try_drop_caps()
    } else {
        Err("not root: nothing to drop".to_string())
    };
    Probed {
        is_root,
        user_ns,
        pid_ns,
        net_ns,
        landlock_abi,
        seccomp,
        drop_caps,
    }
}

/// Facility names accepted by [`Facilities::assemble`]'s `disable` list.
/// "cgroup" turns off only the pids cgroup, "process-count limit" every process-count limit.
pub const FACILITY_NAMES: [&str; 8] = [
    "pid namespace",
    "network namespace",
    "user namespace",
    "landlock",
    "seccomp",
    "drop capabilities",
    "cgroup",
    "process-count limit",
];

fn fac(name: &'static str, r: Result<String, String>) -> Facility {
    match r {
        Ok(detail) => Facility {
            name,
            available: true,
            detail,
        },
        Err(detail) => Facility {
            name,
            available: false,
            detail,
        },
    }
}

impl Facilities {
    /// What is used, given the probe and the facilities turned off by configuration (names from
    /// [`FACILITY_NAMES`]; "cgroup" and "process-count limit" are handled by the `Sandbox`).
    fn assemble(p: &Probed, disable: &[String]) -> Result<Facilities, String> {
        if let Some(bad) = disable
            .iter()
            .find(|d| !FACILITY_NAMES.contains(&d.as_str()))
        {
            return Err(format!(
                "unknown facility {bad:?}; expected one of {FACILITY_NAMES:?}"
            ));
        }
        let off = |name: &str, r: &Result<(), String>| -> Result<(), String> {
            if disable.iter().any(|d| d == name) {
                Err("turned off by configuration".into())
            } else {
                r.clone()
            }
        };
        let user_ns = if p.is_root {
            Err("not needed as root".to_string())
        } else {
            off("user namespace", &p.user_ns)
        };
        let needs_user = |r: Result<(), String>| match (&user_ns, p.is_root) {
            (Err(e), false) => r.and(Err(format!("needs a user namespace ({e})"))),
            _ => r,
        };
        let pid_ns = needs_user(off("pid namespace", &p.pid_ns));
        let net_ns = needs_user(off("network namespace", &p.net_ns));
        let landlock_abi = if disable.iter().any(|d| d == "landlock") {
            0
        } else {
            p.landlock_abi
        };
        let seccomp = off("seccomp", &p.seccomp);
        let drop_caps = off("drop capabilities", &p.drop_caps);
        let mut flags = 0;
        if user_ns.is_ok() {
            flags |= libc::CLONE_NEWUSER;
        }
        if pid_ns.is_ok() {
            flags |= libc::CLONE_NEWPID;
        }
        if net_ns.is_ok() {
            flags |= libc::CLONE_NEWNET;
        }

        let mut list = Vec::new();
        if !p.is_root {
            list.push(fac(
                "user namespace",
                user_ns
                    .clone()
                    .map(|_| "uid mapped to itself; a per-sample RLIMIT_NPROC count".into()),
            ));
        }
        list.push(fac(
            "pid namespace",
            pid_ns.clone().map(|_| {
                "each sample is pid 1 of its own namespace; its exit kills every descendant".into()
            }),
        ));
        list.push(fac(
            "network namespace",
            net_ns
                .clone()
                .map(|_| "each sample has an empty network namespace (loopback down)".into()),
        ));
        let abi = landlock_abi;
        let why_not = |need: i32, linux: &str| {
            if p.landlock_abi >= need && abi == 0 {
                "turned off by configuration".to_string()
            } else {
                format!("needs Landlock ABI {need} (Linux {linux}), have {abi}")
            }
        };
        list.push(fac("landlock filesystem", if abi >= 1 { Ok(format!("ABI {abi}: writes only in the sample's directory, reads only the interpreter and system libraries")) } else { Err(why_not(1, "5.13")) }));
        list.push(fac(
            "landlock tcp",
            if abi >= 4 {
                Ok("TCP bind/connect denied".into())
            } else {
                Err(why_not(4, "6.7"))
            },
        ));
        list.push(fac(
            "landlock scopes",
            if abi >= 6 {
                Ok("signals and abstract UNIX sockets cannot leave the sandbox".into())
            } else {
                Err(why_not(6, "6.12"))
            },
        ));
        let guards = guards_for(pid_ns.is_ok(), abi);
        let mut what = String::from(
            "socket creation, namespaces, mounts, ptrace, io_uring, bpf, chmod/chown/xattr and similar system calls denied",
        );
        if guards.groups {
            what.push_str("; setsid/setpgid denied (no pid namespace)");
        }
        if guards.signals {
            what.push_str(
                "; signals only to the own process group (no pid namespace, no Landlock scopes)",
            );
        }
        list.push(fac("seccomp", seccomp.clone().map(|_| what)));
        let signals = if pid_ns.is_ok() {
            Ok("pid namespace: nothing outside is visible".to_string())
        } else if abi >= 6 {
            Ok("Landlock scope: signals cannot leave the sandbox".to_string())
        } else if seccomp.is_ok() {
            Ok("seccomp: kill only to the own process group".to_string())
        } else {
            Err("no pid namespace, Landlock scope or seccomp: a sample can signal any process of this uid".to_string())
        };
        list.push(fac("signal isolation", signals));
        if p.is_root {
            list.push(fac(
                "drop capabilities",
                drop_caps
                    .clone()
                    .map(|_| "samples run as uid 0 with no capabilities".into()),
            ));
        }
        list.push(fac(
            "rlimits",
            Ok("address space, CPU time, file size, open files, core dumps".into()),
        ));
        Ok(Facilities {
            is_root: p.is_root,
            unshare_flags: flags,
            pid_ns: pid_ns.is_ok(),
            net_ns: net_ns.is_ok(),
            user_ns: user_ns.is_ok(),
            landlock_abi,
            seccomp: seccomp.is_ok(),
            drop_caps: drop_caps.is_ok(),
            list,
        })
    }
}

/// An empty network namespace, held by an fd (O_CLOEXEC): a helper child unshares one and waits
/// until we have opened `/proc/<pid>/ns/net`, then is killed; the fd keeps the namespace alive.
pub(crate) fn empty_netns() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Read;
    let (mut ready_r, ready_w) = std::io::pipe()?;
    let ready_w_fd = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    // SAFETY: the child makes raw system calls only (unshare, write, pause, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            let ok: u8 = if libc::unshare(libc::CLONE_NEWNET) == 0 {
                1
            } else {
                0
            };
            libc::write(ready_w_fd, (&ok as *const u8).cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    drop(ready_w);
    let mut ok = [0u8; 1];
    let read = ready_r.read_exact(&mut ok);
    let opened = match (read, ok[0]) {
        (Ok(()), 1) => {
            std::fs::File::open(format!("/proc/{pid}/ns/net")).map(std::os::fd::OwnedFd::from)
        }
        (Err(e), _) => Err(e),
        _ => Err(std::io::Error::other(
            "unshare(CLONE_NEWNET) failed in the helper",
        )),
    };
    // SAFETY: our own child; kill and reap it.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    }
    opened
}

/// The seccomp guards a machine with these namespaces and Landlock ABI needs.
pub(crate) fn guards_for(pid_ns: bool, landlock_abi: i32) -> policy::Guards {
    policy::Guards {
        groups: !pid_ns,
        signals: !pid_ns && landlock_abi < 6,
    }
}

/// The facilities of this machine (probed once per process), less those in `disable`.
pub fn facilities(disable: &[String]) -> Result<Facilities, String> {
    static P: OnceLock<Probed> = OnceLock::new();
    Facilities::assemble(P.get_or_init(probe), disable)
}
