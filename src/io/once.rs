//! Inputs that can be read only once: stdin (`-`) and pipes or other files that are not
//! regular files (`<(...)`, a FIFO). What passes is hashed on the way ([`read_digest`]):
//! training records the SHA-256 of its data files in the model's provenance, and these have
//! nothing to read a second time.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;

/// Of one read: the hash and byte count of what passed since the input was opened, and
/// whether its end came.
type Passed = (Sha256, u64, bool);

/// Per path, its latest read.
static READS: Mutex<Option<HashMap<String, Passed>>> = Mutex::new(None);

fn with_reads<T>(f: impl FnOnce(&mut HashMap<String, Passed>) -> T) -> T {
    let mut reads = READS.lock().unwrap_or_else(|e| e.into_inner());
    f(reads.get_or_insert_with(HashMap::new))
}

/// Reads `inner` (the input at `path`), hashing what passes.
pub(crate) struct Hashed<R> {
    inner: R,
    path: String,
}

impl<R: Read> Hashed<R> {
    /// Starts a new read of `path` (a previous one's hash is dropped).
    pub(crate) fn new(inner: R, path: &str) -> Self {
        with_reads(|r| r.insert(path.to_string(), (Sha256::new(), 0, false)));
        Hashed {
            inner,
            path: path.to_string(),
        }
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        with_reads(|r| {
            if let Some((hash, bytes, ended)) = r.get_mut(&self.path) {
                hash.update(&buf[..n]);
                *bytes += n as u64;
                *ended |= n == 0 && !buf.is_empty();
            }
        });
        Ok(n)
    }
}

/// Opens `path` as a reader: stdin for `-`, else the file (`open` opens it); stdin and files
/// that are not regular files are hashed as they are read.
pub(crate) fn open_once<F: Read + Send + 'static>(
    path: &str,
    open: impl FnOnce() -> crate::Result<F>,
) -> crate::Result<Box<dyn Read + Send>> {
    if path == "-" {
        return Ok(Box::new(Hashed::new(io::stdin(), path)));
    }
    let file = open()?;
    if read_once(path) {
        Ok(Box::new(Hashed::new(file, path)))
    } else {
        Ok(Box::new(file))
    }
}

/// Whether `path` can be read only once: stdin (`-`), or an existing file that is not a
/// regular file (a pipe, a FIFO).
pub fn read_once(path: &str) -> bool {
    path == "-" || !std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// The hex SHA-256 and size of what was read from `path` (stdin or a file that is not a
/// regular file), once it was read to its end; `None` otherwise.
pub fn read_digest(path: &str) -> Option<(String, u64)> {
    with_reads(|r| {
        let (hash, bytes, ended) = r.get(path)?;
        ended.then(|| {
            let hex = hash
                .clone()
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (hex, *bytes)
        })
    })
}
