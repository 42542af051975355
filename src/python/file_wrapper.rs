#![forbid(unsafe_code)]
//! `wsgi.file_wrapper`: a regular file behind it goes to nginx as a file buffer (sendfile,
//! ranges; the Python thread is free at once); anything else is iterated in blocks.

use std::os::fd::OwnedFd;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The part of a regular file a response sends: our own descriptor, from the file object's
/// current position to its end.
#[derive(Debug)]
pub struct FileBody {
    pub fd: OwnedFd,
    pub offset: u64,
    pub len: u64,
}

#[pyclass(module = "ngx_wsgi", name = "FileWrapper")]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=65536))]
    fn new(filelike: Py<PyAny>, blksize: i64) -> FileWrapper {
        FileWrapper {
            filelike,
            blksize: if blksize > 0 { blksize as usize } else { 65536 },
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (self.blksize,))?;
        let empty = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes().is_empty(),
            Err(_) => data.len().map(|n| n == 0).unwrap_or(true),
        };
        Ok(if empty { None } else { Some(data) })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.close_file(py)
    }
}

impl FileWrapper {
    /// The regular file behind the wrapper, if it has one: `fileno()` of a file whose
    /// `fstat` says regular, duplicated (the application may close its own), from `tell()`
    /// (the object's position, buffering included) to the end. Pipes, sockets and objects
    /// without `fileno()` give `None` and are iterated instead.
    pub fn regular_file(&self, py: Python<'_>) -> Option<FileBody> {
        let f = self.filelike.bind(py);
        let fd: i32 = f
            .call_method0(pyo3::intern!(py, "fileno"))
            .ok()?
            .extract()
            .ok()?;
        let os = py.import("os").ok()?;
        let st = os.call_method1("fstat", (fd,)).ok()?;
        let mode: u32 = st.getattr("st_mode").ok()?.extract().ok()?;
        if mode & 0o170000 != 0o100000 {
            return None;
        }
        let size: u64 = st.getattr("st_size").ok()?.extract().ok()?;
        let pos: u64 = match f.call_method0(pyo3::intern!(py, "tell")) {
            Ok(p) => p.extract().ok()?,
            Err(_) => os.call_method1("lseek", (fd, 0, 1)).ok()?.extract().ok()?,
        };
        let dup: i32 = os.call_method1("dup", (fd,)).ok()?.extract().ok()?;
        let fd = crate::python::interp::own_fd(dup);
        Some(FileBody {
            fd,
            offset: pos.min(size),
            len: size.saturating_sub(pos),
        })
    }

    fn close_file(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(pyo3::intern!(py, "close"))? {
            f.call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }
}
