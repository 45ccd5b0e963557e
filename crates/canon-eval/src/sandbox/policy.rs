//! The two kernel policies the sandboxed child installs on itself: a Landlock ruleset (file system,
//! TCP, signals and abstract sockets) and seccomp filters (system calls).
//!
//! Landlock (Linux >= 5.13; ABI probed at run time): every access right the kernel knows is
//! *handled*, so everything not granted is denied. Granted: read + execute beneath the interpreter's
//! prefixes and module paths, `/usr`, `/lib*`, `/etc/ld.so.cache`; everything except device-node
//! creation beneath the sample's private directory. ABI >= 4: TCP bind/connect handled and never
//! granted. ABI >= 6: signals and abstract UNIX sockets scoped to the sandbox.
//!
//! seccomp (no libseccomp; BPF built by `seccompiler`): `socket` (every family: a path-named UNIX
//! socket would reach outside the network namespace), namespace and mount syscalls, `ptrace` and
//! cross-process memory access, io_uring, BPF, kernel keyrings, modules, clocks, reboot, and the
//! metadata changes Landlock does not cover (chmod, chown, xattrs, timestamps) fail with EPERM;
//! `clone` with a `CLONE_NEW*` flag fails with EPERM; `clone3` (whose flags BPF cannot read) fails
//! with ENOSYS so that libc falls back to `clone`. Without a pid namespace, `setsid`/`setpgid` are
//! denied too (every process stays in the group the harness kills), and when Landlock cannot scope
//! signals either, signals may only go to the sample's own process group (`kill(0, sig)`).

use super::SandboxError;
use super::child::Bpf;
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope,
};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The Landlock ABI the running kernel supports (0: none), without creating anything.
pub(crate) fn landlock_abi() -> i32 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attr and size 0 only queries the ABI.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if v < 0 { 0 } else { v as i32 }
}

fn ll_err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Landlock(e.to_string())
}

/// Builds the ruleset for one sample and returns its fd (O_CLOEXEC), ready for
/// `landlock_restrict_self` in the child.
pub(crate) fn landlock_ruleset(
    abi_version: i32,
    read: &[PathBuf],
    rw: &Path,
) -> Result<OwnedFd, SandboxError> {
    let abi = ABI::from(abi_version);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(ll_err)?;
    if abi_version >= 4 {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(ll_err)?;
    }
    if abi_version >= 6 {
        ruleset = ruleset.scope(Scope::from_all(abi)).map_err(ll_err)?;
    }
    let mut created = ruleset.create().map_err(ll_err)?;
    let file_rights = AccessFs::from_file(abi);
    for path in read {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            Err(_) => continue, // listed paths that do not exist on this system grant nothing
        };
        let mut rights = AccessFs::from_read(abi);
        if !path.is_dir() {
            rights &= file_rights;
        }
        created = created
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(ll_err)?;
    }
    let rw_rights = AccessFs::from_all(abi) & !(AccessFs::MakeBlock | AccessFs::MakeChar);
    let fd = PathFd::new(rw).map_err(ll_err)?;
    created = created
        .add_rule(PathBeneath::new(fd, rw_rights))
        .map_err(ll_err)?;
    let fd: Option<OwnedFd> = created.into();
    fd.ok_or_else(|| SandboxError::Landlock("the kernel returned no ruleset".into()))
}

/// System-wide read-only paths the interpreter needs besides its own prefix.
pub(crate) fn system_read_paths() -> Vec<PathBuf> {
    [
        "/usr",
        "/lib",
        "/lib64",
        "/lib32",
        "/libx32",
        "/bin",
        "/etc/ld.so.cache",
        "/etc/localtime",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect()
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn sc_err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Seccomp(e.to_string())
}

/// Extra denials for machines where namespaces do not contain the sample.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Guards {
    /// No pid namespace: keep every process in the process group the harness kills.
    pub groups: bool,
    /// Neither a pid namespace nor Landlock signal scoping: signals only to the own group.
    pub signals: bool,
}

/// The seccomp programs, in installation order.
pub(crate) fn seccomp_programs(guard: Guards) -> Result<Vec<Bpf>, SandboxError> {
    let arch = target_arch()?;
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    #[rustfmt::skip]
    let always: &[libc::c_long] = &[
        libc::SYS_socket, libc::SYS_ptrace, libc::SYS_process_vm_readv, libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd, libc::SYS_mount, libc::SYS_umount2, libc::SYS_pivot_root,
        libc::SYS_chroot, libc::SYS_setns, libc::SYS_unshare, libc::SYS_open_tree,
        libc::SYS_move_mount, libc::SYS_fsopen, libc::SYS_fsconfig, libc::SYS_fsmount,
        libc::SYS_fspick, libc::SYS_mount_setattr, libc::SYS_keyctl, libc::SYS_add_key,
        libc::SYS_request_key, libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter, libc::SYS_io_uring_register, libc::SYS_userfaultfd,
        libc::SYS_kexec_load, libc::SYS_kexec_file_load, libc::SYS_init_module,
        libc::SYS_finit_module, libc::SYS_delete_module, libc::SYS_reboot, libc::SYS_swapon,
        libc::SYS_swapoff, libc::SYS_syslog, libc::SYS_acct, libc::SYS_settimeofday,
        libc::SYS_clock_settime, libc::SYS_clock_adjtime, libc::SYS_adjtimex,
        libc::SYS_sethostname, libc::SYS_setdomainname, libc::SYS_quotactl,
        libc::SYS_open_by_handle_at, libc::SYS_name_to_handle_at, libc::SYS_vhangup,
        libc::SYS_fchmod, libc::SYS_fchmodat, libc::SYS_fchown, libc::SYS_fchownat,
        libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr, libc::SYS_removexattr,
        libc::SYS_lremovexattr, libc::SYS_fremovexattr, libc::SYS_utimensat,
        452, // fchmodat2 (Linux 6.6), the same number on every architecture
    ];
    for &nr in always {
        deny.insert(nr, Vec::new()); // an empty rule list matches every call
    }
    #[cfg(target_arch = "x86_64")]
    for nr in [
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_utime,
        libc::SYS_utimes,
        libc::SYS_futimesat,
    ] {
        deny.insert(nr, Vec::new());
    }
    if guard.groups {
        deny.insert(libc::SYS_setsid, Vec::new());
        deny.insert(libc::SYS_setpgid, Vec::new());
    }
    if guard.signals {
        // kill(pid, sig) only with pid == 0: the caller's own process group.
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, 0)
            .map_err(sc_err)?;
        deny.insert(
            libc::SYS_kill,
            vec![SeccompRule::new(vec![cond]).map_err(sc_err)?],
        );
        for nr in [
            libc::SYS_tkill,
            libc::SYS_tgkill,
            libc::SYS_rt_sigqueueinfo,
            libc::SYS_rt_tgsigqueueinfo,
            libc::SYS_pidfd_open,
            libc::SYS_pidfd_send_signal,
        ] {
            deny.insert(nr, Vec::new());
        }
    }
    // clone(flags, ...) with any CLONE_NEW* flag: one rule per flag, rules are OR-ed.
    let ns_flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWCGROUP,
    ];
    let mut clone_rules = Vec::new();
    for flag in ns_flags {
        let flag = flag as u64;
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(sc_err)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(sc_err)?);
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let main = SeccompFilter::new(deny, SeccompAction::Allow, eperm, arch).map_err(sc_err)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    let clone3 = SeccompFilter::new(clone3, SeccompAction::Allow, enosys, arch).map_err(sc_err)?;
    Ok(vec![
        main.try_into().map_err(sc_err)?,
        clone3.try_into().map_err(sc_err)?,
    ])
}
