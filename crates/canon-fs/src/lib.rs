//! Crash-safe output: the one way Canon writes a file or a folder.
//!
//! A file is written to a temporary name beside its destination (`.NAME.PID.canon-tmp`), synced to
//! disk, then renamed over the destination, and the folder is synced; a folder is built under a
//! temporary name and swapped in the same way. A process killed at any instant (SIGKILL, power
//! loss after the sync) therefore leaves either the earlier output untouched or the new one
//! complete, never a truncated file. Temporary files a killed process left behind are removed by
//! the next write to the same destination.
//!
//! Crash tests need to stop a process at the one instant a timer rarely hits: between the last
//! byte of the temporary file and the rename. Setting `CANON_CRASH_AT` to a point name
//! ([`POINT_MID_WRITE`], [`POINT_BEFORE_RENAME`]) makes the process abort there, exactly as a
//! SIGKILL would (no destructors, no cleanup). The variable is read only by the write functions
//! here and means nothing else.

pub mod lines;
pub mod walk;

pub use walk::{WalkError, walk_files};

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Crash point: half of the temporary file is written.
pub const POINT_MID_WRITE: &str = "mid-write";
/// Crash point: the temporary file (or folder) is complete and synced, not yet renamed.
pub const POINT_BEFORE_RENAME: &str = "before-rename";
/// The environment variable naming the crash point to abort at (tests only).
pub const CRASH_ENV: &str = "CANON_CRASH_AT";

/// Aborts the process when `CANON_CRASH_AT` names `point` for a write to `dest`.
///
/// The variable's value is `POINT`, `POINT:NAME` or `POINT:NAME:N`: abort at `POINT` of every
/// write, of writes to a destination whose file name is `NAME`, or at the `N`-th such write (1 =
/// the first) of this process.
pub fn crash_point(point: &str, dest: &Path) {
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let Some(spec) = std::env::var_os(CRASH_ENV) else {
        return;
    };
    let spec = spec.to_string_lossy();
    let mut parts = spec.splitn(3, ':');
    if parts.next() != Some(point) {
        return;
    }
    if let Some(name) = parts.next()
        && dest.file_name().is_none_or(|n| n.to_string_lossy() != name)
    {
        return;
    }
    let nth: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    if SEEN.fetch_add(1, Ordering::SeqCst) + 1 >= nth {
        eprintln!(
            "canon: {CRASH_ENV}={spec}: aborting before {} is complete, as a crash test asked",
            dest.display()
        );
        std::process::abort();
    }
}

const TMP_SUFFIX: &str = ".canon-tmp";

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> io::Result<OsString> {
    path.file_name().map(|n| n.to_os_string()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })
}

/// The temporary name this process uses for `path`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let mut name = OsString::from(".");
    name.push(file_name(path)?);
    name.push(format!(".{}{TMP_SUFFIX}", std::process::id()));
    Ok(parent_of(path).join(name))
}

/// Whether a process with this id is running (Linux: `/proc`; elsewhere assumed running, so
/// nothing is removed that might be in use).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    proc_root.join(pid.to_string()).exists()
}

/// A temporary name left by a process: `.NAME.PID.canon-tmp` (a file or folder being written),
/// or `.NAME.old.PID.canon-tmp` (the earlier folder a commit moved aside). Returns (NAME, moved
/// aside, PID).
fn parse_temp_name(n: &str) -> Option<(&str, bool, u32)> {
    let rest = n.strip_prefix('.')?.strip_suffix(TMP_SUFFIX)?;
    let (stem, pid) = rest.rsplit_once('.')?;
    let pid = pid.parse::<u32>().ok()?;
    Some(match stem.strip_suffix(".old") {
        Some(name) => (name, true, pid),
        None => (stem, false, pid),
    })
}

/// Handles one entry named like a temporary of a dead process: an earlier folder a killed commit
/// had moved aside goes back to `dest` when nothing replaced it; anything else is removed.
fn clean_temp(p: &Path, dest: &Path, moved_aside: bool) {
    if moved_aside && p.is_dir() && !dest.exists() && fs::rename(p, dest).is_ok() {
        // The commit died between its two renames: the earlier output goes back.
        return;
    }
    let _ = if p.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
}

/// Removes temporary files and folders that dead processes left for `path`.
pub fn remove_stale_temps(path: &Path) {
    let Ok(name) = file_name(path) else { return };
    let name = name.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir(parent_of(path)) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some((of, moved_aside, pid)) = parse_temp_name(&n)
            && of == name
            && !alive(pid)
        {
            clean_temp(&e.path(), path, moved_aside);
        }
    }
}

/// Removes what dead processes left in `dir`, for every destination in it.
pub fn remove_stale_temps_in(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some((of, moved_aside, pid)) = parse_temp_name(&n)
            && !of.is_empty()
            && !alive(pid)
        {
            clean_temp(&e.path(), &dir.join(of), moved_aside);
        }
    }
}

/// Sweeps the folder of `path` for dead processes' temporaries the first time this process writes
/// into it. Once per folder, not once per write: a folder that receives many small files (a cache
/// of model calls) would otherwise be listed again for every file.
fn sweep_once(path: &Path) {
    static SWEPT: std::sync::Mutex<Option<std::collections::HashSet<PathBuf>>> =
        std::sync::Mutex::new(None);
    let dir = parent_of(path);
    let key = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let first = match SWEPT.lock() {
        Ok(mut g) => g.get_or_insert_with(Default::default).insert(key),
        // A writer panicked while holding the lock: sweep again rather than never.
        Err(_) => true,
    };
    if first {
        remove_stale_temps_in(&dir);
    }
}

/// Syncs a folder so that a rename inside it survives a power loss (no-op where folders cannot be
/// opened).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` crash-safely.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| {
        let half = bytes.len() / 2;
        w.write_all(&bytes[..half])?;
        if half > 0 {
            w.flush()?;
            crash_point(POINT_MID_WRITE, path);
        }
        w.write_all(&bytes[half..])
    })
}

/// Writes a file crash-safely by streaming: `fill` writes the content into a buffered writer over
/// the temporary file. If `fill` fails, the temporary file is removed and `path` is untouched.
pub fn write_atomic_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    sweep_once(path);
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        crash_point(POINT_BEFORE_RENAME, path);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(&parent_of(path));
    Ok(())
}

/// A folder being built under a temporary name beside its destination; [`StagedDir::commit`]
/// swaps it in. Dropped without a commit, it is removed.
#[derive(Debug)]
pub struct StagedDir {
    dest: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Starts an empty staging folder for `dest` (which may exist: it stays untouched until the
    /// commit).
    pub fn new(dest: &Path) -> io::Result<Self> {
        sweep_once(dest);
        let tmp = temp_path(dest)?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(Self {
            dest: dest.to_path_buf(),
            tmp,
            committed: false,
        })
    }

    /// The folder to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the staged files and moves the folder to its destination, replacing an earlier
    /// folder there. Between the two renames of a replacement, the destination is briefly absent
    /// (the earlier folder is then at `.NAME.old.PID.canon-tmp`, removed right after).
    pub fn commit(mut self) -> io::Result<PathBuf> {
        for e in fs::read_dir(&self.tmp)?.flatten() {
            if e.path().is_file() {
                File::open(e.path())?.sync_all()?;
            }
        }
        sync_dir(&self.tmp);
        crash_point(POINT_BEFORE_RENAME, &self.dest);
        if self.dest.exists() {
            let mut name = OsString::from(".");
            name.push(file_name(&self.dest)?);
            name.push(format!(".old.{}{TMP_SUFFIX}", std::process::id()));
            let old = parent_of(&self.dest).join(name);
            fs::rename(&self.dest, &old)?;
            if let Err(e) = fs::rename(&self.tmp, &self.dest) {
                let _ = fs::rename(&old, &self.dest);
                return Err(e);
            }
            let _ = if old.is_dir() {
                fs::remove_dir_all(&old)
            } else {
                fs::remove_file(&old)
            };
        } else {
            fs::rename(&self.tmp, &self.dest)?;
        }
        sync_dir(&parent_of(&self.dest));
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_fill_leaves_the_earlier_file_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.txt");
        write_atomic(&p, b"kept").unwrap();
        let e = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"));
        assert_eq!(fs::read(&p).unwrap(), b"kept");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        // A pid above the kernel's maximum (2^22) is never alive.
        let dead = d
            .path()
            .join(format!(".m.gguf.{}{TMP_SUFFIX}", 4_194_305 + 7));
        let mine = temp_path(&p).unwrap();
        let other = d.path().join(".other.gguf.4194312.canon-tmp");
        fs::write(&dead, b"x").unwrap();
        fs::write(&other, b"x").unwrap();
        remove_stale_temps(&p);
        if Path::new("/proc/self").exists() {
            assert!(!dead.exists());
        }
        assert!(
            other.exists(),
            "another destination's temporary is not ours"
        );
        fs::write(&mine, b"x").unwrap();
        remove_stale_temps(&p);
        assert!(mine.exists(), "this process's own temporary is in use");
    }

    #[test]
    fn staged_folders_replace_whole_or_vanish() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("adapter");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old.txt"), b"old").unwrap();
        {
            let s = StagedDir::new(&dest).unwrap();
            fs::write(s.path().join("new.txt"), b"new").unwrap();
            // dropped without commit
        }
        assert!(dest.join("old.txt").exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        let s = StagedDir::new(&dest).unwrap();
        fs::write(s.path().join("new.txt"), b"new").unwrap();
        s.commit().unwrap();
        assert!(!dest.join("old.txt").exists());
        assert_eq!(fs::read(dest.join("new.txt")).unwrap(), b"new");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_first_write_into_a_folder_sweeps_it_once_for_every_destination() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dead = 4_194_305 + 11;
        let a = d.path().join(format!(".a.json.{dead}{TMP_SUFFIX}"));
        let b = d.path().join(format!(".b.v1.json.{dead}{TMP_SUFFIX}"));
        let aside = d.path().join(format!(".ix.old.{dead}{TMP_SUFFIX}"));
        let unrelated = d.path().join(".notes.txt");
        fs::write(&a, b"x").unwrap();
        fs::write(&b, b"x").unwrap();
        fs::create_dir(&aside).unwrap();
        fs::write(&unrelated, b"keep").unwrap();
        write_atomic(&d.path().join("c.json"), b"{}").unwrap();
        assert!(!a.exists() && !b.exists(), "every dead temporary goes");
        assert!(
            d.path().join("ix").is_dir(),
            "a moved-aside folder comes back"
        );
        assert!(unrelated.exists());
        // Later writes into the same folder do not list it again.
        let late = d.path().join(format!(".a.json.{dead}{TMP_SUFFIX}"));
        fs::write(&late, b"x").unwrap();
        write_atomic(&d.path().join("d.json"), b"{}").unwrap();
        assert!(late.exists(), "swept once per folder per process");
        assert_eq!(
            parse_temp_name(".x.old.12.canon-tmp"),
            Some(("x", true, 12))
        );
        assert_eq!(
            parse_temp_name(".a.b.c.12.canon-tmp"),
            Some(("a.b.c", false, 12))
        );
        assert_eq!(parse_temp_name(".a.canon-tmp"), None);
        assert_eq!(parse_temp_name("a.12.canon-tmp"), None);
    }

    #[test]
    fn an_earlier_folder_moved_aside_by_a_killed_commit_comes_back() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("index");
        let aside = d
            .path()
            .join(format!(".index.old.{}{TMP_SUFFIX}", 4_194_305 + 9));
        fs::create_dir(&aside).unwrap();
        fs::write(aside.join("a"), b"earlier").unwrap();
        if !Path::new("/proc/self").exists() {
            return;
        }
        remove_stale_temps(&dest);
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"earlier");
        assert!(!aside.exists());
    }

    #[test]
    fn a_path_without_a_file_name_is_an_error() {
        let e = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
