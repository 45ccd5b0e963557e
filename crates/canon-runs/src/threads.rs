//! How many compute threads a command uses by default.

/// Physical cores this process may run on: logical CPUs in its affinity set, counting SMT siblings
/// (same package and core id) once. Falls back to the logical count where sysfs is not readable.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let read = |cpu: usize, f: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{f}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut cores = std::collections::HashSet::new();
    for cpu in 0..logical.max(1) * 64 {
        if cores.len() >= logical {
            break;
        }
        match (read(cpu, "physical_package_id"), read(cpu, "core_id")) {
            (Some(p), Some(c)) => {
                cores.insert((p, c));
            }
            _ if cpu >= logical => break,
            _ => return logical,
        }
    }
    cores.len().clamp(1, logical)
}
