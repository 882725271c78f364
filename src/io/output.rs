//! Output files written atomically: everything goes to a temporary file in the destination's
//! directory, which is renamed over the destination only when the whole output is complete.
//! An error (or a crash) never leaves a partial output behind.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A unique temporary path next to `dest` (same directory, so the rename is atomic).
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dest.with_file_name(format!(".{name}.{}.{nonce}.tmp", std::process::id()))
}

/// An output that becomes visible only on [`Output::commit`]; `-` writes to stdout.
pub struct Output {
    inner: BufWriter<Box<dyn Write + Send>>,
    temp: Option<tempfile::TempPath>,
    /// A second handle on the temporary file, for rewriting a header in place.
    file: Option<std::fs::File>,
    dest: String,
}

impl Output {
    /// Opens an output for `dest` (`-` for stdout).
    pub fn create(dest: &str) -> Result<Self> {
        if dest == "-" {
            return Ok(Output {
                inner: BufWriter::with_capacity(1 << 16, Box::new(std::io::stdout())),
                temp: None,
                file: None,
                dest: dest.into(),
            });
        }
        let path = Path::new(dest);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::usage(
                format!(
                    "cannot write {dest}: directory {} does not exist",
                    dir.display()
                ),
                "create the directory first or choose another output path",
            ));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(dest, e))?;
        // Temporary files are created private (0600); the output should get the usual
        // permissions of a new file.
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(|e| Error::io(dest, e))?;
        }
        let (file, temp) = tmp.into_parts();
        let second = file.try_clone().map_err(|e| Error::io(dest, e))?;
        Ok(Output {
            inner: BufWriter::with_capacity(1 << 16, Box::new(file) as Box<dyn Write + Send>),
            temp: Some(temp),
            file: Some(second),
            dest: dest.into(),
        })
    }

    /// The destination as given.
    pub fn dest(&self) -> &str {
        &self.dest
    }

    /// Flushes and renames the temporary file into place.
    pub fn commit(mut self) -> Result<()> {
        self.inner.flush().map_err(|e| Error::io(&self.dest, e))?;
        if let Some(temp) = self.temp.take() {
            temp.persist(&self.dest)
                .map_err(|e| Error::io(&self.dest, e.error))?;
        }
        Ok(())
    }

    /// Overwrites bytes already written at `offset` (a header whose values are known only
    /// at the end). Not available for stdout.
    pub fn patch(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.inner.flush().map_err(|e| Error::io(&self.dest, e))?;
        match &self.file {
            Some(f) => f
                .write_all_at(bytes, offset)
                .map_err(|e| Error::io(&self.dest, e)),
            None => Err(Error::usage(
                format!("{}: cannot rewrite a header on a stream", self.dest),
                "write to a file",
            )),
        }
    }

    /// Writes bytes, mapping errors to the destination path.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner
            .write_all(bytes)
            .map_err(|e| Error::io(&self.dest, e))
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Length of the `.npy` headers written by [`npy_header_fixed`]: room for any shape of two
/// 20-digit dimensions, so a header can be rewritten in place once the length is known.
pub const NPY_FIXED_HEADER: usize = 128;

/// An `.npy` header of exactly [`NPY_FIXED_HEADER`] bytes.
pub fn npy_header_fixed(shape: &[usize]) -> Vec<u8> {
    let mut h = npy_header(shape);
    if h.len() < NPY_FIXED_HEADER {
        let pad = NPY_FIXED_HEADER - h.len();
        h.pop(); // the final '\n'
        h.extend(std::iter::repeat_n(b' ', pad));
        h.push(b'\n');
        let dict_len = (NPY_FIXED_HEADER - 10) as u16;
        h[8..10].copy_from_slice(&dict_len.to_le_bytes());
    }
    h
}

/// Writes an `.npy` (format 1.0) header for a little-endian float32 C-order array.
pub fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // magic(6) + version(2) + len(2) + dict + '\n' must be a multiple of 64.
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - total % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// File name for a record id: characters other than letters, digits, `.`, `_`, `-` become `_`.
pub fn safe_file_name(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_shape() {
        let h = npy_header(&[300, 16]);
        assert_eq!(h.len() % 64, 0);
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(text.contains("'shape': (300, 16)"), "{text}");
        assert!(text.contains("'<f4'"));
        assert!(text.ends_with('\n'));
        let h1 = npy_header(&[5]);
        assert!(String::from_utf8_lossy(&h1).contains("(5,)"));
    }

    #[test]
    fn fixed_npy_header_has_constant_length() {
        for shape in [[0usize, 1], [7, 16], [250_000_000, 1024]] {
            let h = npy_header_fixed(&shape);
            assert_eq!(h.len(), NPY_FIXED_HEADER);
            let dict = u16::from_le_bytes([h[8], h[9]]) as usize;
            assert_eq!(10 + dict, NPY_FIXED_HEADER);
            assert!(String::from_utf8_lossy(&h).contains(&format!("({}, {})", shape[0], shape[1])));
        }
    }

    #[test]
    fn output_is_invisible_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.tsv");
        let d = dest.to_str().unwrap();
        let mut o = Output::create(d).unwrap();
        o.write_all(b"hello\n").unwrap();
        assert!(!dest.exists());
        drop(o);
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temp file left behind"
        );
        let mut o = Output::create(d).unwrap();
        o.write_all(b"hello\n").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "hello\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o644,
            "outputs are readable by others, like any new file"
        );
    }

    #[test]
    fn file_names_are_sanitised() {
        assert_eq!(safe_file_name("chr1:1-10"), "chr1_1-10");
        assert_eq!(safe_file_name("../x"), "_.._x");
    }
}
