//! Output files written atomically: everything goes to a temporary file in the destination's
//! directory, which is renamed over the destination only when the whole output is complete.
//! An error (or a crash) never leaves a partial output behind.
//!
//! Every temporary output is listed while it is pending ([`PendingPath`]), so that a process
//! that is interrupted (Ctrl-C, `kill`) can remove the unfinished ones before it ends
//! ([`remove_pending`]; the binary does so on SIGINT, SIGTERM and SIGHUP). Listing a new
//! temporary output, publishing finished ones ([`publish`]) and removing them all hold one
//! lock, so an interruption finds each output either still pending (and removes it) or
//! published whole, and outputs published together ([`Output::commit_all`]) appear together
//! or not at all.
//!
//! A file output named `*.gz` or `*.bgz` is written compressed as BGZF (bgzip's format):
//! gzip readers take it, and `tabix` can index a sorted BED or bedGraph so written.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{Error, Result};

/// What an interruption does with a listed path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A temporary output: removed (a directory with its contents).
    Output,
    /// A directory this run made to hold outputs: removed only if it is empty.
    MadeDir,
}

/// Temporary outputs not yet renamed into place, by id.
#[derive(Debug)]
struct PendingList {
    paths: Vec<(u64, PathBuf, Kind)>,
    next: u64,
}

impl PendingList {
    const fn new() -> Self {
        PendingList {
            paths: Vec::new(),
            next: 0,
        }
    }

    fn add(&mut self, path: PathBuf, kind: Kind) -> u64 {
        let id = self.next;
        self.next += 1;
        self.paths.push((id, path, kind));
        id
    }

    fn forget(&mut self, id: u64) {
        self.paths.retain(|(i, _, _)| *i != id);
    }

    /// Removes every listed output (a file, or a directory with its contents), then the
    /// directories made for outputs that are left empty (children first), and empties
    /// the list; returns how many outputs existed.
    fn remove_all(&mut self) -> usize {
        let removed = self
            .paths
            .iter()
            .filter(|(_, p, k)| *k == Kind::Output && remove_path(p))
            .count();
        let mut dirs: Vec<&PathBuf> = (self.paths.iter())
            .filter(|e| e.2 == Kind::MadeDir)
            .map(|e| &e.1)
            .collect();
        // Children before their parents.
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in dirs {
            let _ = std::fs::remove_dir(p);
        }
        self.paths.clear();
        removed
    }
}

static PENDING: Mutex<PendingList> = Mutex::new(PendingList::new());

fn pending_list() -> MutexGuard<'static, PendingList> {
    // A panic while the list was held leaves it consistent (each change is one push or
    // retain), so a poisoned lock is used as it is.
    PENDING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a file or a directory tree; whether there was one.
fn remove_path(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).is_ok(),
        Ok(_) => std::fs::remove_file(path).is_ok(),
        Err(_) => false,
    }
}

/// A temporary output (file or directory) that is removed when dropped unpublished, or when
/// the process is interrupted ([`remove_pending`]), and kept by [`publish`]. Or a directory
/// made to hold outputs ([`PendingPath::make_dir`]), removed in the same cases if it is still
/// empty.
#[derive(Debug)]
pub struct PendingPath {
    id: u64,
    path: PathBuf,
    kind: Kind,
}

impl PendingPath {
    /// Lists `path` (which need not exist yet) as a pending temporary output.
    pub fn new(path: PathBuf) -> Self {
        let id = pending_list().add(path.clone(), Kind::Output);
        PendingPath {
            id,
            path,
            kind: Kind::Output,
        }
    }

    /// Makes directory `dir` and any missing parents, like `create_dir_all`, listing each one
    /// made (none if `dir` exists): each is removed, if it is empty, when the process is
    /// interrupted or the list is dropped before [`PendingPath::keep_all`].
    pub fn make_dir(dir: &Path) -> std::io::Result<Vec<PendingPath>> {
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.exists()).collect();
        missing.retain(|p| !p.as_os_str().is_empty());
        let mut list = pending_list();
        std::fs::create_dir_all(dir)?;
        // Deepest first, so that dropping the list in order removes children first.
        Ok(missing
            .into_iter()
            .map(|p| {
                let path = p.to_path_buf();
                let id = list.add(path.clone(), Kind::MadeDir);
                PendingPath {
                    id,
                    path,
                    kind: Kind::MadeDir,
                }
            })
            .collect())
    }

    /// Keeps these paths whatever happens next: unlists them.
    pub fn keep_all(pending: Vec<PendingPath>) {
        unlist(&mut pending_list(), pending);
    }

    /// Runs `make`, which creates a temporary output and returns it with its path, while
    /// holding the list, so that an interruption cannot fall between the creation and the
    /// listing.
    pub fn create<T>(make: impl FnOnce() -> Result<(T, PathBuf)>) -> Result<(T, Self)> {
        let mut list = pending_list();
        let (made, path) = make()?;
        let id = list.add(path.clone(), Kind::Output);
        Ok((
            made,
            PendingPath {
                id,
                path,
                kind: Kind::Output,
            },
        ))
    }

    /// The temporary path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PendingPath {
    fn drop(&mut self) {
        match self.kind {
            Kind::Output => {
                remove_path(&self.path);
            }
            Kind::MadeDir => {
                let _ = std::fs::remove_dir(&self.path);
            }
        }
        pending_list().forget(self.id);
    }
}

/// Takes `pending` off `list` without removing anything.
fn unlist(list: &mut PendingList, pending: Vec<PendingPath>) {
    for p in pending {
        list.forget(p.id);
        // Unlisted above; its drop would remove what it names.
        std::mem::forget(p);
    }
}

/// Runs `rename` (the renames that move finished outputs into place) holding the list, so
/// that an interruption waits until all of them are in place; then unlists `pending`. If
/// `rename` fails, `pending` is dropped instead: what was not renamed is removed.
pub fn publish<T, E>(
    pending: Vec<PendingPath>,
    rename: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let mut list = pending_list();
    let out = rename();
    if out.is_ok() {
        unlist(&mut list, pending);
    } else {
        // Each drop takes the list itself.
        drop(list);
        drop(pending);
    }
    out
}

/// Held while a group of outputs is saved that must be complete or absent as a whole
/// ([`uninterrupted`]); [`remove_pending`] waits for it.
static SAVING: Mutex<()> = Mutex::new(());

/// Runs `save` (which writes, lists and publishes outputs as usual) so that an interruption
/// arriving meanwhile waits until it has finished: for a group of files written one after
/// another that only make sense together (a training epoch's model, log and checkpoint).
/// Not to be nested.
pub fn uninterrupted<T>(save: impl FnOnce() -> T) -> T {
    let _saving = SAVING.lock().unwrap_or_else(PoisonError::into_inner);
    save()
}

/// Removes every pending temporary output, then runs `then` with their count while still
/// holding the list, so that nothing can be published or listed after the removal: for a
/// process ending on a signal (`then` exits). Waits for a save under way in
/// [`uninterrupted`].
pub fn remove_pending<R>(then: impl FnOnce(usize) -> R) -> R {
    let _saving = SAVING.lock().unwrap_or_else(PoisonError::into_inner);
    let mut list = pending_list();
    let removed = list.remove_all();
    then(removed)
}

/// Like [`remove_pending`], for a process that must end now and cannot wait for the list:
/// when another thread holds it (or this one does, having failed inside a change to it) for
/// about 100 ms, nothing is removed and `then` gets `None`.
pub fn try_remove_pending<R>(then: impl FnOnce(Option<usize>) -> R) -> R {
    for _ in 0..100 {
        match PENDING.try_lock() {
            Ok(mut list) => return then(Some(list.remove_all())),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                return then(Some(p.into_inner().remove_all()));
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
        }
    }
    then(None)
}

/// `path` with its symbolic links followed, as far as they lead (a link to a file that does
/// not exist yet gives that file's path); `path` itself when it is not a link.
pub fn resolve_links(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    // A bounded walk: a loop of links ends as the system's own open would fail on it.
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            break;
        }
        match std::fs::read_link(&path) {
            Ok(to) if to.is_absolute() => path = to,
            Ok(to) => {
                path = match path.parent() {
                    Some(dir) => dir.join(to),
                    None => to,
                }
            }
            Err(_) => break,
        }
    }
    path
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`: readers see
/// the old file or the new one whole, and an interruption leaves no temporary file.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = PendingPath::new(temp_path(path));
    std::fs::write(tmp.path(), bytes)
        .map_err(|e| Error::io(tmp.path().display().to_string(), e))?;
    let from = tmp.path().to_path_buf();
    publish(vec![tmp], || {
        std::fs::rename(&from, path).map_err(|e| Error::io(path.display().to_string(), e))
    })
}

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

/// Where an [`Output`]'s bytes go: a file, a stream, or a compressor over a file, finished
/// (a compressor's last block and end-of-file marker written) on commit.
trait Sink: Write + Send {
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

impl Sink for std::fs::File {}
impl Sink for Stream {}
/// What an [`Output`] holds once dropped.
impl Sink for std::io::Sink {}

/// BGZF compression (bgzip's format) over a file.
type Bgzf = noodles::bgzf::io::MultithreadedWriter<std::fs::File>;

impl Sink for Bgzf {
    fn finish(&mut self) -> std::io::Result<()> {
        Bgzf::finish(self).map(drop)
    }
}

/// A BGZF compressor over `file` on `rayon`'s number of threads.
fn bgzf(file: std::fs::File) -> Bgzf {
    let workers = std::num::NonZeroUsize::new(rayon::current_num_threads().clamp(1, 16))
        .unwrap_or(std::num::NonZeroUsize::MIN);
    Bgzf::with_worker_count(workers, file)
}

/// Whether output `dest` is written compressed (BGZF): its name ends in `.gz` or `.bgz`.
fn compressed_name(dest: &Path) -> bool {
    dest.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gz") || e.eq_ignore_ascii_case("bgz"))
}

/// A stream output (stdout, a device, a named pipe) that, once told to
/// ([`Output::keep_going_when_closed`]), takes what is written after its reader has gone
/// (a closed pipe) and drops it, so that the command's other outputs can still be finished.
struct Stream {
    inner: Box<dyn Write + Send>,
    keep_going: std::sync::Arc<std::sync::atomic::AtomicBool>,
    closed: bool,
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e)
                if e.kind() == std::io::ErrorKind::BrokenPipe
                    && self.keep_going.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                self.closed = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e)
                if e.kind() == std::io::ErrorKind::BrokenPipe
                    && self.keep_going.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// An output that becomes visible only on [`Output::commit`]; `-` writes to stdout.
pub struct Output {
    inner: BufWriter<Box<dyn Sink>>,
    /// The temporary file and its listing (dropped in this order: the file is removed before
    /// it is unlisted).
    temp: Option<(tempfile::TempPath, PendingPath)>,
    /// A second handle on the temporary file, for rewriting a header in place.
    file: Option<std::fs::File>,
    /// The destination as given, `stdout` for `-`.
    dest: String,
    /// Where the temporary file goes: `dest` with its links followed.
    target: PathBuf,
    /// For a stream: whether a closed reader lets the command go on.
    keep_going: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Output {
    /// Opens an output for `dest` (`-` for stdout).
    pub fn create(dest: &str) -> Result<Self> {
        if dest.is_empty() {
            return Err(Error::usage(
                "an output path is empty",
                "give the file to write (or - for stdout)",
            ));
        }
        // Standard output by a name (which, followed, could lead to a file that stdout was
        // redirected to: renaming over it would lose what the shell wrote there before).
        if matches!(dest, "-" | "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1") {
            return Ok(Self::stream("stdout", Box::new(std::io::stdout())));
        }
        if dest.ends_with('/') {
            return Err(Error::usage(
                format!("cannot write {dest}: the path ends with '/', the mark of a directory"),
                "give the path of a file to write",
            ));
        }
        // A device or a named pipe (`/dev/null`, a FIFO, by a link too) is written to as it
        // is: renaming a file over it would replace it. Like stdout, it gets the output as it
        // is made.
        let meta = std::fs::metadata(dest);
        if let Ok(meta) = &meta
            && !meta.is_file()
            && !meta.is_dir()
        {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dest)
                .map_err(|e| {
                    Error::usage(
                        format!("cannot write {dest}: {}", std::io::Error::from(e.kind())),
                        "choose a location you can write to",
                    )
                })?;
            return Ok(Self::stream(dest, Box::new(file)));
        }
        // A link is followed: the file it points to is replaced, and the link stays.
        let target = match meta {
            Ok(m) if m.is_file() => {
                std::fs::canonicalize(dest).unwrap_or_else(|_| PathBuf::from(dest))
            }
            _ => resolve_links(Path::new(dest)),
        };
        let path = target.as_path();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            let what = if dir.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(Error::usage(
                format!("cannot write {dest}: {} {what}", dir.display()),
                "create the directory first or choose another output path",
            ));
        }
        // Checked now, not when the finished output is renamed over it (after all the work).
        if path.is_dir() {
            return Err(Error::usage(
                format!("cannot write {dest}: it is a directory"),
                "give the path of a file to write, not of a directory",
            ));
        }
        check_replaceable(dest, path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        use std::os::unix::fs::PermissionsExt;
        // The permissions of a new file (0666 less the umask), as any program's output gets.
        let (tmp, pending) = PendingPath::create(|| {
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{name}."))
                .suffix(".tmp")
                .permissions(std::fs::Permissions::from_mode(0o666))
                .tempfile_in(&dir)
                .map_err(|e| cannot_write(dest, &dir, e))?;
            let path = tmp.path().to_path_buf();
            Ok((tmp, path))
        })?;
        // A file that is replaced keeps its permissions.
        if let Ok(old) = std::fs::metadata(path) {
            tmp.as_file()
                .set_permissions(old.permissions())
                .map_err(|e| Error::io(dest, e))?;
        }
        let (file, temp) = tmp.into_parts();
        // Compressed by the name given (a link's target may be named otherwise), with no
        // bytes to rewrite in place.
        let (sink, second): (Box<dyn Sink>, _) = if compressed_name(Path::new(dest)) {
            (Box::new(bgzf(file)), None)
        } else {
            let second = file.try_clone().map_err(|e| Error::io(dest, e))?;
            (Box::new(file), Some(second))
        };
        Ok(Output {
            inner: BufWriter::with_capacity(1 << 16, sink),
            temp: Some((temp, pending)),
            file: second,
            dest: dest.into(),
            target,
            keep_going: Default::default(),
        })
    }

    /// An output written as it is made (stdout, a device, a named pipe).
    fn stream(dest: &str, inner: Box<dyn Write + Send>) -> Self {
        let keep_going = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = Stream {
            inner,
            keep_going: keep_going.clone(),
            closed: false,
        };
        Output {
            inner: BufWriter::with_capacity(1 << 16, Box::new(stream) as Box<dyn Sink>),
            temp: None,
            file: None,
            dest: dest.into(),
            target: PathBuf::new(),
            keep_going,
        }
    }

    /// Whether this output is a stream (stdout, a device, a named pipe), written as it is
    /// made rather than renamed into place.
    pub fn is_stream(&self) -> bool {
        self.temp.is_none()
    }

    /// A stream whose reader goes away (`| head`) drops the rest of its output instead of
    /// ending the command, for a command whose other outputs should still be finished.
    pub fn keep_going_when_closed(&self) {
        self.keep_going
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The destination as given (`stdout` for `-`), as errors name it.
    pub fn dest(&self) -> &str {
        &self.dest
    }

    /// Flushes and renames the temporary file into place.
    pub fn commit(self) -> Result<()> {
        Self::commit_all(vec![self])
    }

    /// Flushes all of `outputs`, then renames them into place together: an interruption
    /// finds none of them or all of them in place (an error renaming one leaves those before
    /// it in place).
    pub fn commit_all(outputs: Vec<Output>) -> Result<()> {
        let mut renames: Vec<(tempfile::TempPath, PathBuf, String)> = Vec::new();
        let mut pending = Vec::new();
        for mut o in outputs {
            o.inner.flush().map_err(|e| Error::io(&o.dest, e))?;
            o.inner
                .get_mut()
                .finish()
                .map_err(|e| Error::io(&o.dest, e))?;
            if let Some((temp, listed)) = o.temp.take() {
                renames.push((temp, o.target.clone(), o.dest.clone()));
                pending.push(listed);
            }
        }
        // What can be seen to fail a rename (a directory made at a destination during the
        // run) is checked for all of them before the first: none is then published.
        if let Some((_, _, dest)) = renames.iter().find(|(_, target, _)| target.is_dir()) {
            return Err(Error::usage(
                format!("cannot write {dest}: it has become a directory during the run"),
                "remove or rename that directory, then run again",
            ));
        }
        publish(pending, || {
            for (temp, target, dest) in renames {
                temp.persist(&target)
                    .map_err(|e| Error::io(&dest, e.error))?;
            }
            Ok(())
        })
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
                format!(
                    "{}: cannot rewrite a header on a stream or in a compressed file",
                    self.dest
                ),
                "write to a plain file",
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

impl Drop for Output {
    /// Reached without [`Output::commit`] only on an error: what is still buffered is not
    /// written (stdout would otherwise get a table's header, or its first rows, before the
    /// error line).
    fn drop(&mut self) {
        let unwritten = std::mem::replace(
            &mut self.inner,
            BufWriter::with_capacity(0, Box::new(std::io::sink())),
        );
        drop(unwritten.into_parts());
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

/// File name for a record id: characters other than ASCII letters and digits, `.`, `_`, `-`
/// become `_`, and `_` goes in front of a name that would be empty or start with `.`.
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

/// Refuses to replace an existing file (`path`, links followed, named `dest` to the user)
/// that the user may not replace, as the shell's `>` would refuse to write it: renaming a
/// new file over it would not ask, or would fail only after all the work.
pub fn check_replaceable(dest: &str, path: &Path) -> Result<()> {
    match unwritable(path) {
        None => Ok(()),
        Some(what) => Err(Error::usage(
            format!(
                "cannot write {}: it exists and {what}",
                through_link(dest, path)
            ),
            "choose another output path, or make it one you may replace (chmod, or its owner)",
        )),
    }
}

/// `dest`, and where it is a symbolic link, the file `target` that it leads to (which is the
/// one written).
fn through_link(dest: &str, target: &Path) -> String {
    if std::fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) {
        format!("{dest} (a link to {})", target.display())
    } else {
        dest.to_string()
    }
}

/// Why an existing file (links followed) may not be replaced by renaming a new file over it
/// ("is read-only", ...), or `None` when it may, or does not exist. A file with no write
/// permission for anyone is kept from root too, whom permissions do not stop.
pub fn unwritable(path: &Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let old = std::fs::metadata(path).ok()?;
    if old.is_dir() {
        return Some("is a directory".into());
    }
    if !old.is_file() {
        return None;
    }
    if old.permissions().readonly() {
        return Some("is read-only".into());
    }
    let target = std::fs::canonicalize(path).ok()?;
    if let Err(e) = access_w(&target) {
        return Some(if e.raw_os_error() == Some(libc::EROFS) {
            "is on a read-only file system".into()
        } else {
            "you have no permission to write it".into()
        });
    }
    // The new file is made beside it and renamed over it.
    let dir = target.parent()?;
    if access_w(dir).is_err() {
        return Some(format!(
            "its directory {} is not writable to you",
            dir.display()
        ));
    }
    // In a sticky directory (/tmp) only a file's owner (or the directory's) may replace it.
    let dir_meta = std::fs::metadata(dir).ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if dir_meta.permissions().mode() & 0o1000 != 0
        && me != 0
        && old.uid() != me
        && dir_meta.uid() != me
    {
        return Some(format!(
            "belongs to another user, in {}, a directory where only a file's owner may replace it (sticky bit)",
            dir.display()
        ));
    }
    None
}

/// `access(path, W_OK)`: whether this process may write `path`.
fn access_w(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The error for an output whose file cannot be made: what the system said, for the path the
/// user gave (not the temporary file's), and what to do.
fn cannot_write(dest: &str, dir: &Path, e: std::io::Error) -> Error {
    let why = std::io::Error::from(e.kind());
    Error::usage(
        format!(
            "cannot write {dest}: {why} (making a file in {})",
            dir.display()
        ),
        "choose a location you can write to",
    )
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
    fn pending_paths_are_removed_unless_published() {
        let dir = tempfile::tempdir().unwrap();
        // Dropped unpublished (an error on the way): the file is removed.
        let gone = dir.path().join("gone");
        std::fs::write(&gone, "x").unwrap();
        drop(PendingPath::new(gone.clone()));
        assert!(!gone.exists());
        // Published: the renamed output stays, and the listing with it is gone.
        let tmp = dir.path().join("tmp");
        let kept = dir.path().join("kept");
        let pending = PendingPath::new(tmp.clone());
        std::fs::write(&tmp, "y").unwrap();
        let id = pending.id;
        publish(vec![pending], || std::fs::rename(&tmp, &kept)).unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "y");
        assert!(pending_list().paths.iter().all(|(i, _, _)| *i != id));

        // What an interruption removes: files and directories listed, whatever they hold.
        let mut list = PendingList::new();
        let file = dir.path().join("f.tmp");
        let tree = dir.path().join("d.tmp");
        std::fs::write(&file, "z").unwrap();
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/w"), "w").unwrap();
        list.add(file.clone(), Kind::Output);
        list.add(tree.clone(), Kind::Output);
        let never = list.add(dir.path().join("never-made"), Kind::Output);
        list.forget(never);
        list.add(dir.path().join("not-made-yet"), Kind::Output);
        assert_eq!(list.remove_all(), 2);
        assert!(!file.exists() && !tree.exists());
        assert!(list.paths.is_empty());
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "y");
    }

    #[test]
    fn directories_made_for_outputs_go_only_while_empty() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("a");
        let leaf = top.join("b/c");
        // Dropped while empty (an error before any output): every directory made goes, the
        // one that was there stays.
        let made = PendingPath::make_dir(&leaf).unwrap();
        assert_eq!(made.len(), 3);
        assert!(leaf.is_dir());
        drop(made);
        assert!(!top.exists() && dir.path().is_dir());
        // Dropped holding a finished output: all stay.
        let made = PendingPath::make_dir(&leaf).unwrap();
        std::fs::write(leaf.join("x.npy"), "x").unwrap();
        drop(made);
        assert!(leaf.join("x.npy").exists());
        // Existing already: nothing is listed.
        assert!(PendingPath::make_dir(&leaf).unwrap().is_empty());
        // Kept (success): stays even when empty.
        let empty = dir.path().join("e");
        PendingPath::keep_all(PendingPath::make_dir(&empty).unwrap());
        assert!(empty.is_dir());

        // On an interruption: the outputs are removed and counted, then the directories made
        // that are left empty; a directory made that holds a finished output stays.
        let mut list = PendingList::new();
        let (full, bare) = (dir.path().join("full"), dir.path().join("bare/sub"));
        std::fs::create_dir_all(&full).unwrap();
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::write(full.join("done.npy"), "d").unwrap();
        list.add(full.clone(), Kind::MadeDir);
        list.add(bare.clone(), Kind::MadeDir);
        list.add(dir.path().join("bare"), Kind::MadeDir);
        let tmp = bare.join(".b.npy.tmp");
        std::fs::write(&tmp, "t").unwrap();
        list.add(tmp.clone(), Kind::Output);
        assert_eq!(list.remove_all(), 1);
        assert!(!tmp.exists() && !dir.path().join("bare").exists());
        assert!(full.join("done.npy").exists());
    }

    #[test]
    fn outputs_committed_together_all_appear() {
        let dir = tempfile::tempdir().unwrap();
        let dests: Vec<_> = ["a", "b"].iter().map(|n| dir.path().join(n)).collect();
        let mut outs = Vec::new();
        for d in &dests {
            let mut o = Output::create(d.to_str().unwrap()).unwrap();
            o.write_all(b"row\n").unwrap();
            outs.push(o);
        }
        let ids: Vec<u64> = outs.iter().map(|o| o.temp.as_ref().unwrap().1.id).collect();
        let listed = |id: &u64| pending_list().paths.iter().any(|(i, _, _)| i == id);
        assert!(ids.iter().all(listed), "pending while being written");
        assert!(dests.iter().all(|d| !d.exists()));
        Output::commit_all(outs).unwrap();
        for d in &dests {
            assert_eq!(std::fs::read_to_string(d).unwrap(), "row\n");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "temporary files left behind");
        assert!(!ids.iter().any(listed), "unlisted once in place");
    }

    #[test]
    fn a_destination_that_became_a_directory_stops_every_output_of_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let dests: Vec<_> = ["a", "b", "c"].iter().map(|n| dir.path().join(n)).collect();
        let mut outs = Vec::new();
        for d in &dests {
            let mut o = Output::create(d.to_str().unwrap()).unwrap();
            o.write_all(b"row\n").unwrap();
            outs.push(o);
        }
        // Made while the outputs were written: its rename would fail after the first.
        std::fs::create_dir(&dests[1]).unwrap();
        let err = Output::commit_all(outs).unwrap_err().to_string();
        assert!(err.contains("has become a directory"), "{err}");
        assert!(
            !dests[0].exists() && !dests[2].exists(),
            "published in part"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary files left behind");
    }

    #[test]
    fn file_names_are_sanitised() {
        assert_eq!(safe_file_name("chr1:1-10"), "chr1_1-10");
        assert_eq!(safe_file_name("../x"), "_.._x");
        // As the README says: ASCII letters only; no hidden or empty names.
        assert_eq!(safe_file_name("\u{e9}t\u{e9}"), "_t_");
        assert_eq!(safe_file_name("."), "_.");
        assert_eq!(safe_file_name(".."), "_..");
        assert_eq!(safe_file_name(""), "_");
    }
}
