//! Tests of asset pinning, fetching and verification (a fake `pip` serves a test wheel).
use std::io::Write;

use sha2::{Digest, Sha256};

use super::*;

#[test]
fn unknown_alias_names_the_known_ones() {
    let e = spec("gpt5").unwrap_err().to_string();
    assert!(e.contains("gpt5") && e.contains("smollm2") && e.contains("minilm"));
}

#[test]
fn unpack_refuses_nothing_valid_and_keeps_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = tmp.path().join("x-1.0-py3-none-any.whl");
    {
        let f = fs::File::create(&wheel).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file("pkg/model/a.txt", opts).unwrap();
        z.write_all(b"hello").unwrap();
        z.start_file("pkg/model/sub/b.txt", opts).unwrap();
        z.write_all(b"world").unwrap();
        z.start_file("pkg/other.py", opts).unwrap();
        z.write_all(b"skip").unwrap();
        z.finish().unwrap();
    }
    let dest = tmp.path().join("out");
    fs::create_dir_all(&dest).unwrap();
    unpack_member_dir(&wheel, "pkg/model/", &dest).unwrap();
    assert_eq!(fs::read_to_string(dest.join("a.txt")).unwrap(), "hello");
    assert_eq!(fs::read_to_string(dest.join("sub/b.txt")).unwrap(), "world");
    assert!(!dest.join("other.py").exists());
    assert_eq!(
        sha256_file(&dest.join("a.txt")).unwrap(),
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
}

/// A test asset: a wheel with `pkg/data/a.bin` and `pkg/data/sub/b.txt`, a fake `python` that
/// "downloads" it (copies it into `--dest` after a short sleep, and logs each call), and a spec
/// pinning it. `tweak` edits the spec before it is leaked.
struct Fixture {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    python: String,
    log: PathBuf,
    spec: &'static AssetSpec,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn write_wheel(path: &Path, entries: &[(&str, &[u8])]) {
    let f = fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn fixture(tweak: impl FnOnce(&mut AssetSpec, &mut Vec<PinnedFile>)) -> Fixture {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let wheel = tmp.path().join("testpkg-1.0-py3-none-any.whl");
    write_wheel(
        &wheel,
        &[
            ("pkg/data/a.bin", &[1u8, 2, 3, 4][..]),
            ("pkg/data/sub/b.txt", b"hello"),
            ("pkg/other.py", b"not part of the asset"),
        ],
    );
    let log = tmp.path().join("calls.log");
    let python = tmp.path().join("fakepython");
    fs::write(
        &python,
        format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = --dest ]; then dest=$2; fi\n  shift\ndone\n\
             sleep 0.2\nmkdir -p \"$dest\" && cp '{}' \"$dest/\" && echo call >> '{}'\n",
            wheel.display(),
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
    let mut pins = vec![
        PinnedFile {
            path: "a.bin",
            sha256: leak(sha256_hex(&[1u8, 2, 3, 4])),
        },
        PinnedFile {
            path: "sub/b.txt",
            sha256: leak(sha256_hex(b"hello")),
        },
    ];
    let mut spec = AssetSpec {
        name: "testasset",
        package: "testpkg",
        version: "1.0",
        wheel_sha256: leak(sha256_file(&wheel).unwrap()),
        member_dir: "pkg/data/",
        main_file: "a.bin",
        pinned: &[],
        description: "a test asset",
        extra_wheels: &[],
        assemble: None,
    };
    tweak(&mut spec, &mut pins);
    spec.pinned = Box::leak(pins.into_boxed_slice());
    Fixture {
        home: tmp.path().join("home"),
        python: python.display().to_string(),
        log,
        spec: Box::leak(Box::new(spec)),
        _tmp: tmp,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Fixture {
    fn ensure(&self) -> Result<PathBuf> {
        ensure_in(&self.home, &self.python, self.spec, &Quiet)
    }
    fn calls(&self) -> usize {
        fs::read_to_string(&self.log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
    fn dir(&self) -> PathBuf {
        asset_dir_in(&self.home, self.spec)
    }
}

#[test]
fn fetch_pins_wheel_and_files_then_reads_the_cache() {
    let f = fixture(|_, _| {});
    let dir = f.ensure().unwrap();
    assert_eq!(fs::read(dir.join("a.bin")).unwrap(), [1, 2, 3, 4]);
    assert_eq!(fs::read_to_string(dir.join("sub/b.txt")).unwrap(), "hello");
    assert!(!dir.join("other.py").exists());
    f.ensure().unwrap();
    assert_eq!(f.calls(), 1, "a verified cache must not fetch again");
    assert_eq!(verify_dir(f.spec, &dir).unwrap(), vec![]);
}

#[test]
fn wheel_checksum_mismatch_is_refused_and_leaves_nothing() {
    let f = fixture(|s, _| s.wheel_sha256 = "00");
    let e = f.ensure().unwrap_err().to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("expected sha256 00"),
        "{e}"
    );
    assert!(!f.dir().exists());
}

#[test]
fn file_checksum_mismatch_and_unpinned_files_are_refused() {
    let f = fixture(|_, pins| pins[1].sha256 = "ff");
    let e = f.ensure().unwrap_err().to_string();
    assert!(
        e.contains("sub/b.txt") && e.contains("expected sha256 ff"),
        "{e}"
    );
    assert!(!f.dir().exists());
    let f = fixture(|_, pins| {
        pins.pop();
    });
    let e = f.ensure().unwrap_err().to_string();
    assert!(e.contains("does not pin") && e.contains("sub/b.txt"), "{e}");
    assert!(!f.dir().exists());
}

#[test]
fn a_changed_cached_file_is_fetched_again_and_a_touched_one_is_not() {
    let f = fixture(|_, _| {});
    let dir = f.ensure().unwrap();
    // Same bytes, new modification time: rehashed, accepted, no fetch.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(dir.join("sub/b.txt"), b"hello").unwrap();
    assert!(!is_cached_in(&f));
    f.ensure().unwrap();
    assert_eq!(f.calls(), 1);
    assert_eq!(state_in(f.spec, &dir), CacheState::Verified);
    // Different bytes: noticed and fetched again.
    fs::write(dir.join("a.bin"), b"tampered").unwrap();
    let bad = verify_dir(f.spec, &dir).unwrap();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].file, "a.bin");
    f.ensure().unwrap();
    assert_eq!(f.calls(), 2);
    assert_eq!(fs::read(dir.join("a.bin")).unwrap(), [1, 2, 3, 4]);
    // A deleted file too.
    fs::remove_file(dir.join("sub/b.txt")).unwrap();
    f.ensure().unwrap();
    assert_eq!(f.calls(), 3);
    assert_eq!(verify_dir(f.spec, &dir).unwrap(), vec![]);
}

fn is_cached_in(f: &Fixture) -> bool {
    state_in(f.spec, &f.dir()) == CacheState::Verified
}

#[test]
fn concurrent_fetches_fetch_once_and_all_succeed() {
    let f = fixture(|_, _| {});
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| f.ensure())).collect();
        for h in hs {
            let d = h.join().unwrap().unwrap();
            assert_eq!(fs::read(d.join("a.bin")).unwrap(), [1, 2, 3, 4]);
        }
    });
    assert_eq!(f.calls(), 1);
}

#[test]
fn a_stale_half_unpacked_folder_and_leftover_work_dirs_are_replaced() {
    let f = fixture(|_, _| {});
    let dir = f.dir();
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.bin"), b"\x01\x02").unwrap(); // cut short, no marker
    let leftover = dir.parent().unwrap().join(".testasset-fetch-killed");
    fs::create_dir_all(leftover.join("download")).unwrap();
    f.ensure().unwrap();
    assert_eq!(fs::read(dir.join("a.bin")).unwrap(), [1, 2, 3, 4]);
    assert!(
        !leftover.exists(),
        "a killed fetch's work folder was left behind"
    );
    let left: Vec<_> = fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-fetch-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn archive_entries_that_escape_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "pkg/data/../../../evil.txt",
        "/etc/evil.txt",
        "pkg/data/../x.txt",
    ] {
        let wheel = tmp.path().join("w.whl");
        write_wheel(&wheel, &[(name, b"x")]);
        let dest = tmp.path().join("dest");
        fs::create_dir_all(&dest).unwrap();
        let r = unpack_member_dir(&wheel, "pkg/data/", &dest);
        // Either refused, or (outside the member folder) skipped: never written outside dest.
        if let Err(e) = &r {
            let e = e.to_string();
            assert!(e.contains("path in archive"), "{e}");
        }
        assert!(!tmp.path().join("evil.txt").exists());
        assert!(!Path::new("/etc/evil.txt").exists());
        assert!(!tmp.path().join("x.txt").exists());
        fs::remove_dir_all(&dest).unwrap();
    }
}

#[test]
fn garbage_wheel_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = tmp.path().join("bad.whl");
    fs::write(&wheel, b"not a zip").unwrap();
    let e = unpack_member_dir(&wheel, "x/", tmp.path()).unwrap_err();
    assert!(e.to_string().contains("bad.whl"), "{e}");
}

/// Set by [`a_killed_fetch_leaves_nothing_or_the_whole_asset`] for the child process it kills: the
/// folder of the parent's fixture (wheel, fake interpreter, cache home).
const CHILD_ENV: &str = "CANON_ASSETS_TEST_FETCH_CHILD";

/// The process the kill test starts and kills; a no-op in an ordinary test run.
#[test]
fn fetch_in_a_child_process() {
    let Some(root) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let wheel = root.join("testpkg-1.0-py3-none-any.whl");
    let spec = AssetSpec {
        name: "testasset",
        package: "testpkg",
        version: "1.0",
        wheel_sha256: leak(sha256_file(&wheel).unwrap()),
        member_dir: "pkg/data/",
        main_file: "a.bin",
        pinned: Box::leak(
            vec![
                PinnedFile {
                    path: "a.bin",
                    sha256: leak(sha256_hex(&[1u8, 2, 3, 4])),
                },
                PinnedFile {
                    path: "sub/b.txt",
                    sha256: leak(sha256_hex(b"hello")),
                },
            ]
            .into_boxed_slice(),
        ),
        description: "a test asset",
        extra_wheels: &[],
        assemble: None,
    };
    let python = root.join("fakepython").display().to_string();
    ensure_in(&root.join("home"), &python, &spec, &Quiet).unwrap();
}

#[test]
fn a_killed_fetch_leaves_nothing_or_the_whole_asset() {
    let f = fixture(|_, _| {});
    let root = f._tmp.path().to_path_buf();
    let child = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::fetch_in_a_child_process",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // The whole fetch takes the fake interpreter's 0.2 s sleep plus the unpacking.
    let t = std::time::Instant::now();
    let status = child().wait().unwrap();
    assert!(status.success());
    let full = t.elapsed();
    assert!(is_cached_in(&f));
    for frac in [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99] {
        fs::remove_dir_all(f.dir()).unwrap();
        let mut c = child();
        std::thread::sleep(full.mul_f64(frac));
        // SIGKILL.
        let _ = c.kill();
        let _ = c.wait();
        let dir = f.dir();
        if dir.exists() {
            assert_eq!(
                verify_dir(f.spec, &dir).unwrap(),
                vec![],
                "SIGKILL at {:.0} %: a folder is in place but not the complete asset",
                frac * 100.0
            );
            assert!(is_cached_in(&f), "a complete folder carries its marker");
        }
        // The next fetch works, whatever the kill left.
        let got = f.ensure().unwrap();
        assert_eq!(fs::read(got.join("a.bin")).unwrap(), [1, 2, 3, 4]);
    }
    // Leftover work folders of killed fetches are removed by a later fetch.
    std::thread::sleep(std::time::Duration::from_millis(300));
    fs::remove_dir_all(f.dir()).unwrap();
    f.ensure().unwrap();
    let parent = f.dir().parent().unwrap().to_path_buf();
    let work: Vec<String> = fs::read_dir(&parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-fetch-"))
        .collect();
    assert!(work.is_empty(), "work folders left: {work:?}");
}

#[test]
fn chunk_wheels_are_fetched_together_checked_and_joined() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let w1 = wheels.join("chunky_part1-1.0-py3-none-any.whl");
    let w2 = wheels.join("chunky_part2-1.0-py3-none-any.whl");
    write_wheel(
        &w1,
        &[
            ("chunky_part1/data/m.bin.part00", b"hello "),
            ("chunky_part1/__init__.py", b""),
        ],
    );
    write_wheel(&w2, &[("chunky_part2/data/m.bin.part01", b"world")]);
    let python = tmp.path().join("fakepython");
    fs::write(
        &python,
        format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = --dest ]; then dest=$2; fi\n  shift\ndone\n\
             mkdir -p \"$dest\" && cp '{}'/*.whl \"$dest/\"\n",
            wheels.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
    let parts: &'static [PinnedFile] = Box::leak(Box::new([
        PinnedFile {
            path: "m.bin.part00",
            sha256: leak(sha256_hex(b"hello ")),
        },
        PinnedFile {
            path: "m.bin.part01",
            sha256: leak(sha256_hex(b"world")),
        },
    ]));
    let pinned: &'static [PinnedFile] = Box::leak(Box::new([PinnedFile {
        path: "m.bin",
        sha256: leak(sha256_hex(b"hello world")),
    }]));
    let extra: &'static [ExtraWheel] = Box::leak(Box::new([ExtraWheel {
        package: "chunky-part2",
        version: "1.0",
        wheel_sha256: leak(sha256_file(&w2).unwrap()),
        member_dir: "chunky_part2/data/",
    }]));
    let mut spec = AssetSpec {
        name: "chunky",
        package: "chunky-part1",
        version: "1.0",
        wheel_sha256: leak(sha256_file(&w1).unwrap()),
        member_dir: "chunky_part1/data/",
        main_file: "m.bin",
        pinned,
        description: "a chunked asset",
        extra_wheels: extra,
        assemble: Some(Assemble {
            parts,
            into: "m.bin",
        }),
    };
    let home = tmp.path().join("home");
    let py = python.display().to_string();
    let dir = ensure_in(&home, &py, Box::leak(Box::new(spec)), &Quiet).unwrap();
    assert_eq!(fs::read(dir.join("m.bin")).unwrap(), b"hello world");
    assert_eq!(list_files(&dir).unwrap(), vec![".complete", "m.bin"]);

    // A chunk that differs from its pin is refused by name, and nothing is left in place.
    let bad: &'static [PinnedFile] = Box::leak(Box::new([
        parts[0],
        PinnedFile {
            path: "m.bin.part01",
            sha256: leak(sha256_hex(b"earth")),
        },
    ]));
    spec.name = "chunky2";
    spec.assemble = Some(Assemble {
        parts: bad,
        into: "m.bin",
    });
    let e = ensure_in(&home, &py, Box::leak(Box::new(spec)), &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.bin.part01") && e.contains("checksum"), "{e}");
    assert!(!home.join("assets").join("chunky2-1.0").exists());
}
