#![forbid(unsafe_code)]
//! `wsgi.input`: the request body nginx has already read, in memory or in its temp file.
//!
//! Ownership: the segments are owned copies (memory) or our own duplicated descriptors of
//! nginx's temp file (file), so the stream stays valid wherever and whenever the application
//! reads it. File segments are read with `pread` in bounded blocks: a 1 GB upload is never
//! held in memory unless the application itself asks for all of it with `read()`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

/// How much of a file segment is read at a time for `readline()`.
const BLOCK: usize = 64 * 1024;

#[derive(Debug)]
pub enum BodySegment {
    Memory(Vec<u8>),
    File { file: File, offset: u64, len: u64 },
}

impl BodySegment {
    fn len(&self) -> u64 {
        match self {
            BodySegment::Memory(v) => v.len() as u64,
            BodySegment::File { len, .. } => *len,
        }
    }
}

/// A forward-only reader over the body segments.
#[derive(Debug, Default)]
pub struct BodyReader {
    segments: Vec<BodySegment>,
    /// Index of the current segment and the offset inside it.
    seg: usize,
    off: u64,
    remaining: u64,
}

impl BodyReader {
    pub fn new(segments: Vec<BodySegment>) -> BodyReader {
        let remaining = segments.iter().map(BodySegment::len).sum();
        BodyReader {
            segments,
            seg: 0,
            off: 0,
            remaining,
        }
    }

    /// True when what is left to read is all in memory.
    pub fn in_memory(&self) -> bool {
        self.segments[self.seg.min(self.segments.len())..]
            .iter()
            .all(|s| matches!(s, BodySegment::Memory(_)))
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Fills `out` from the current segment, as far as it goes. Returns the count.
    fn read_some(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.seg < self.segments.len() {
            let seg = &self.segments[self.seg];
            let left = seg.len() - self.off;
            if left == 0 {
                self.seg += 1;
                self.off = 0;
                continue;
            }
            let n = (left.min(out.len() as u64)) as usize;
            match seg {
                BodySegment::Memory(v) => {
                    let start = self.off as usize;
                    out[..n].copy_from_slice(&v[start..start + n]);
                }
                BodySegment::File { file, offset, .. } => {
                    let mut done = 0;
                    while done < n {
                        let got =
                            file.read_at(&mut out[done..n], offset + self.off + done as u64)?;
                        if got == 0 {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "request body temp file is shorter than expected",
                            ));
                        }
                        done += got;
                    }
                }
            }
            self.off += n as u64;
            self.remaining -= n as u64;
            return Ok(n);
        }
        Ok(0)
    }

    /// How many bytes `read(size)` gives.
    pub fn wanted(&self, size: Option<usize>) -> usize {
        match size {
            Some(n) => (n as u64).min(self.remaining) as usize,
            None => self.remaining as usize,
        }
    }

    /// Fills `out` (less only at the end of the body). Returns the count.
    pub fn read_into(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut done = 0;
        while done < out.len() {
            match self.read_some(&mut out[done..])? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }

    /// Reads `size` bytes (all that is left when `None`).
    pub fn read(&mut self, size: Option<usize>) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0; self.wanted(size)];
        let n = self.read_into(&mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Reads through the next `\n` (included), at most `limit` bytes.
    pub fn readline(&mut self, limit: Option<usize>) -> std::io::Result<Vec<u8>> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        while out.len() < limit && self.remaining > 0 {
            // Peek at the current segment without consuming past the newline.
            let seg = &self.segments[self.seg];
            let left = seg.len() - self.off;
            if left == 0 {
                self.seg += 1;
                self.off = 0;
                continue;
            }
            let max = (limit - out.len()).min(BLOCK).min(left as usize);
            let chunk: Vec<u8> = match seg {
                BodySegment::Memory(v) => {
                    let start = self.off as usize;
                    v[start..start + max].to_vec()
                }
                BodySegment::File { file, offset, .. } => {
                    let mut buf = vec![0; max];
                    let got = file.read_at(&mut buf, offset + self.off)?;
                    if got == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "request body temp file is shorter than expected",
                        ));
                    }
                    buf.truncate(got);
                    buf
                }
            };
            let take = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => chunk.len(),
            };
            out.extend_from_slice(&chunk[..take]);
            self.off += take as u64;
            self.remaining -= take as u64;
            if out.last() == Some(&b'\n') {
                break;
            }
        }
        Ok(out)
    }
}

fn io_err(e: std::io::Error) -> PyErr {
    PyOSError::new_err(format!("error reading the request body: {e}"))
}

/// Python's idea of "no size": `None` or a negative number.
fn size_arg(size: Option<i64>) -> Option<usize> {
    match size {
        Some(n) if n >= 0 => Some(n as usize),
        _ => None,
    }
}

/// The `wsgi.input` object.
#[pyclass(module = "ngx_wsgi", name = "Input")]
pub struct WsgiInput {
    reader: std::sync::Mutex<BodyReader>,
}

impl WsgiInput {
    pub fn new(segments: Vec<BodySegment>) -> WsgiInput {
        WsgiInput {
            reader: std::sync::Mutex::new(BodyReader::new(segments)),
        }
    }

    fn with<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut BodyReader) -> std::io::Result<T> + Send,
    ) -> PyResult<T>
    where
        T: Send,
    {
        // The lock is never waited for, nor held, by a thread that has the interpreter while
        // another may need the interpreter to let go of it: a body in memory is read at once
        // under the interpreter; a spooled body (or a reader busy on another thread) is
        // locked and read with the interpreter released, and unlocked before it is taken back.
        if let Ok(mut reader) = self.reader.try_lock() {
            if reader.in_memory() {
                return f(&mut reader).map_err(io_err);
            }
        }
        py.detach(|| {
            let mut reader = self
                .reader
                .lock()
                .map_err(|_| PyValueError::new_err("wsgi.input is unusable"))?;
            f(&mut reader).map_err(io_err)
        })
    }
}

#[pymethods]
impl WsgiInput {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        // Read straight into the new bytes object: one copy, not two.
        let want = self.with(py, |r| Ok(r.wanted(size_arg(size))))?;
        let mut got = 0;
        let bytes = PyBytes::new_with(py, want, |buf| {
            got = self.with(py, |r| r.read_into(buf))?;
            Ok(())
        })?;
        if got < want {
            // Another thread read from the same stream meanwhile.
            return Ok(PyBytes::new(py, &bytes.as_bytes()[..got]));
        }
        Ok(bytes)
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with(py, |r| r.readline(size_arg(size)))?;
        Ok(PyBytes::new(py, &data))
    }

    /// Reads lines until EOF, or until about `hint` bytes have been read.
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<i64>) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint).filter(|&h| h > 0);
        let lines = self.with(py, |r| {
            let mut lines = Vec::new();
            let mut total = 0;
            loop {
                let line = r.readline(None)?;
                if line.is_empty() {
                    break;
                }
                total += line.len();
                lines.push(line);
                if hint.is_some_and(|h| total >= h) {
                    break;
                }
            }
            Ok(lines)
        })?;
        let list = PyList::empty(py);
        for l in lines {
            list.append(PyBytes::new(py, &l))?;
        }
        Ok(list)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.with(py, |r| r.readline(None))?;
        Ok(if line.is_empty() {
            None
        } else {
            Some(PyBytes::new(py, &line))
        })
    }

    /// Bytes not yet read (an extension, handy for tests and frameworks that ask).
    #[getter]
    fn remaining(&self, py: Python<'_>) -> u64 {
        self.with(py, |r| Ok(r.remaining())).unwrap_or(0)
    }

    fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(data: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "ngx-wsgi-input-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all(data).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn reader() -> BodyReader {
        let file = temp_file(b"xxne two\nline three\nlast");
        BodyReader::new(vec![
            BodySegment::Memory(b"line one\nli".to_vec()),
            BodySegment::File {
                file,
                offset: 2,
                len: 22,
            },
        ])
    }

    #[test]
    fn readline_crosses_segments() {
        let mut r = reader();
        assert_eq!(r.readline(None).unwrap(), b"line one\n");
        assert_eq!(r.readline(None).unwrap(), b"line two\n");
        assert_eq!(r.readline(Some(4)).unwrap(), b"line");
        assert_eq!(r.readline(None).unwrap(), b" three\n");
        assert_eq!(r.readline(None).unwrap(), b"last");
        assert_eq!(r.readline(None).unwrap(), b"");
    }

    #[test]
    fn read_sizes() {
        let mut r = reader();
        assert_eq!(r.remaining(), 33);
        assert_eq!(r.read(Some(5)).unwrap(), b"line ");
        assert_eq!(r.read(Some(8)).unwrap(), b"one\nline");
        assert_eq!(r.read(None).unwrap(), b" two\nline three\nlast");
        assert_eq!(r.read(Some(10)).unwrap(), b"");
        assert_eq!(r.read(None).unwrap(), b"");
    }

    #[test]
    fn empty_body() {
        let mut r = BodyReader::new(vec![]);
        assert_eq!(r.read(None).unwrap(), b"");
        assert_eq!(r.readline(None).unwrap(), b"");
    }
}
