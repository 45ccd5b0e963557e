//! Reading line-oriented input (JSONL records, one question a line) with a bound on each line.
//!
//! A hostile or mistaken file (a multi-gigabyte "line", a binary file passed as JSONL) must not
//! make a command allocate without limit. [`Lines`] streams the file and stops with an error naming
//! the line and the limit, and the flag that raises it, when a line is longer than the process-wide
//! limit ([`set_max_line_bytes`], the CLI's `--max-line-bytes`; default 16 MiB).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default bound on one line: 16 MiB (a fine-tuning record with a long document fits many
/// times over).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;

static MAX_LINE_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_LINE_BYTES);

/// Sets the bound on one line for every reader of this process (0 is taken as 1).
pub fn set_max_line_bytes(n: usize) {
    MAX_LINE_BYTES.store(n.max(1), Ordering::Relaxed);
}

/// The bound on one line in effect.
pub fn max_line_bytes() -> usize {
    MAX_LINE_BYTES.load(Ordering::Relaxed)
}

/// Why a line could not be read.
#[derive(Debug)]
pub enum LineError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    TooLong {
        path: PathBuf,
        line: usize,
        limit: usize,
    },
    NotUtf8 {
        path: PathBuf,
        line: usize,
    },
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::TooLong { path, line, limit } => write!(
                f,
                "{} line {line}: longer than the limit of {limit} bytes a line \
                 (--max-line-bytes raises it)",
                path.display()
            ),
            Self::NotUtf8 { path, line } => {
                write!(f, "{} line {line}: not UTF-8 text", path.display())
            }
        }
    }
}

impl std::error::Error for LineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The lines of a file, numbered from 1, without their `\n` / `\r\n`.
pub struct Lines<R> {
    reader: R,
    path: PathBuf,
    line: usize,
    limit: usize,
    done: bool,
}

/// Opens `path` for reading line by line under the process-wide bound.
pub fn lines(path: &Path) -> Result<Lines<BufReader<File>>, LineError> {
    let f = File::open(path).map_err(|source| LineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Lines::new(BufReader::new(f), path, max_line_bytes()))
}

/// Reads every line of `path` (the whole file under the per-line bound).
pub fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, LineError> {
    lines(path)?.collect()
}

/// Reads the whole of `path` as text for a parser that takes a string, refusing any line longer
/// than the bound (lines are joined with `\n`).
pub fn read_text(path: &Path) -> Result<String, LineError> {
    let mut out = String::new();
    for item in lines(path)? {
        let (n, line) = item?;
        if n > 1 {
            out.push('\n');
        }
        out.push_str(&line);
    }
    Ok(out)
}

impl<R: BufRead> Lines<R> {
    /// Lines of any buffered reader; `path` names it in errors.
    pub fn new(reader: R, path: &Path, limit: usize) -> Self {
        Self {
            reader,
            path: path.to_path_buf(),
            line: 0,
            limit,
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<(usize, String), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.line += 1;
        let mut buf = Vec::new();
        // At most limit + 2 bytes: the line, its "\r\n", and one byte that shows it is too long.
        let cap = self.limit as u64 + 2;
        let n = match self.reader.by_ref().take(cap).read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(source) => {
                self.done = true;
                return Some(Err(LineError::Io {
                    path: self.path.clone(),
                    source,
                }));
            }
        };
        if n == 0 {
            self.done = true;
            return None;
        }
        let ended = buf.last() == Some(&b'\n');
        if ended {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.len() > self.limit || (!ended && n as u64 == cap) {
            self.done = true;
            return Some(Err(LineError::TooLong {
                path: self.path.clone(),
                line: self.line,
                limit: self.limit,
            }));
        }
        match String::from_utf8(buf) {
            Ok(s) => Some(Ok((self.line, s))),
            Err(_) => {
                self.done = true;
                Some(Err(LineError::NotUtf8 {
                    path: self.path.clone(),
                    line: self.line,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &[u8], limit: usize) -> Vec<Result<(usize, String), String>> {
        Lines::new(text, Path::new("f.jsonl"), limit)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn numbers_lines_and_strips_line_ends() {
        let got = read(b"a\r\nbc\n\nd", 10);
        let want: Vec<Result<(usize, String), String>> = vec![
            Ok((1, "a".into())),
            Ok((2, "bc".into())),
            Ok((3, String::new())),
            Ok((4, "d".into())),
        ];
        assert_eq!(got, want);
        assert!(read(b"", 10).is_empty());
    }

    #[test]
    fn a_line_at_the_limit_passes_one_byte_longer_is_an_error_naming_the_flag() {
        assert_eq!(read(b"abcd\nxy\n", 4).len(), 2);
        assert_eq!(read(b"abcd\r\n", 4), vec![Ok((1, "abcd".into()))]);
        assert_eq!(read(b"abcd", 4), vec![Ok((1, "abcd".into()))]);
        let got = read(b"ok\nabcdefgh\nnever read\n", 4);
        assert_eq!(got.len(), 2);
        let e = got[1].as_ref().unwrap_err();
        assert!(
            e.contains("f.jsonl line 2") && e.contains("4 bytes") && e.contains("--max-line-bytes"),
            "{e}"
        );
        // A line with no end at all is cut at the limit, not read whole.
        let huge = vec![b'x'; 1 << 20];
        let got = read(&huge, 1000);
        assert!(got[0].as_ref().unwrap_err().contains("line 1"));
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let got = read(b"fine\n\xff\xfe\n", 100);
        assert!(got[1].as_ref().unwrap_err().contains("line 2: not UTF-8"));
    }
}
